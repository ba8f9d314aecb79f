"""Karpathy split json (dataset_coco.json / dataset_flickr8k.json / dataset_flickr30k.json)."""

from __future__ import annotations

from pathlib import Path

from capalign.usertext import id_text, is_text

from . import fetch_report as R
from .records import Candidate, clean_captions, keep_with_captions, require
from .fetch_report import SkipLog
from .splits import canonical_split


def is_karpathy(doc: object) -> bool:
    imgs = doc.get("images") if isinstance(doc, dict) else None
    return isinstance(imgs, list) and "annotations" not in doc and (
        "dataset" in doc or (bool(imgs) and isinstance(imgs[0], dict) and "sentences" in imgs[0]))


def karpathy_candidates(path: Path, doc: dict, images: Path, log: SkipLog) -> list[Candidate]:
    """One candidate per image with its Karpathy split (restval joins train); id = cocoid or
    the file name's stem; the image is `filepath/filename` (COCO) or `filename` under `images`."""
    cands = []
    for i, im in enumerate(doc["images"]):
        where = f"images[{i}]"
        require(isinstance(im, dict) and isinstance(im.get("filename"), str), path, where,
                "needs a 'filename'")
        require(isinstance(im.get("sentences"), list), path, f"{where}.sentences", "must be a list")
        split = canonical_split(im.get("split", ""))
        require(split is not None, path, f"{where}.split",
                f"unknown split {im.get('split')!r} (expected train, restval, val or test)")
        rel = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
        iid = id_text(im["cocoid"]) if "cocoid" in im else Path(im["filename"]).stem
        ref = f"{path.name} {where} ({rel})"
        if iid is None:
            log.skip(R.BAD_ID, ref, f"cocoid {im['cocoid']!r} is not a string or an integer")
            continue
        raw = []
        for k, s in enumerate(im["sentences"]):
            require(isinstance(s, dict) and ("raw" in s or "tokens" in s), path,
                    f"{where}.sentences[{k}]", "needs 'raw' or 'tokens'")
            tokens = s.get("tokens")
            words = isinstance(tokens, list) and all(map(is_text, tokens))
            raw.append(s["raw"] if "raw" in s else " ".join(tokens) if words else tokens)
        cands.append(Candidate(image_id=iid, captions=clean_captions(raw, ref, log), ref=ref,
                               path=rel, root=images, split=split))
    return keep_with_captions(cands, log)
