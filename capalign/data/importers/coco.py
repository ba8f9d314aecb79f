"""COCO captions json (`captions_train2014.json` style): {"images": [...], "annotations": [...]}."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from . import fetch_report as R
from capalign.usertext import id_text

from .records import Candidate, clean_captions, keep_with_captions, require
from .fetch_report import SkipLog


def is_coco(doc: object) -> bool:
    return isinstance(doc, dict) and "annotations" in doc and "images" in doc


def coco_candidates(path: Path, doc: dict, images: Path, log: SkipLog) -> list[Candidate]:
    """One candidate per COCO image (id = str(image id)); the file defines no splits. An entry
    whose id is not a string or an integer, or that repeats an earlier id, is skipped and counted."""
    require(isinstance(doc.get("images"), list), path, "key 'images'", "must be a list")
    require(isinstance(doc.get("annotations"), list), path, "key 'annotations'", "must be a list")
    caps: dict[str, list] = defaultdict(list)
    refs: dict[str, list[str]] = defaultdict(list)
    meta: dict[str, str] = {}
    for i, im in enumerate(doc["images"]):
        require(isinstance(im, dict) and "id" in im and "file_name" in im,
                path, f"images[{i}]", "needs 'id' and 'file_name'")
        iid = id_text(im["id"])
        if iid is None:
            log.skip(R.BAD_ID, f"{path.name} images[{i}]", f"id {im['id']!r} is not a string or an integer")
        elif not isinstance(im["file_name"], str):
            log.skip(R.BAD_NAME, f"{path.name} images[{i}]", f"file_name {im['file_name']!r} is not a string")
        elif iid in meta:
            log.skip(R.DUPLICATE, f"{path.name} images[{i}] ({im['file_name']})",
                     f"image id {iid} already listed for {meta[iid]}")
        else:
            meta[iid] = im["file_name"]
    for j, ann in enumerate(doc["annotations"]):
        require(isinstance(ann, dict) and "image_id" in ann and "caption" in ann,
                path, f"annotations[{j}]", "needs 'image_id' and 'caption'")
        iid = id_text(ann["image_id"])
        if iid is None:
            log.skip(R.BAD_ID, f"{path.name} annotations[{j}]", f"image_id {ann['image_id']!r}")
            continue
        if iid not in meta:
            log.skip(R.UNKNOWN_IMAGE, f"{path.name} annotations[{j}]", f"image_id {iid}")
            continue
        caps[iid].append(ann["caption"])
        refs[iid].append(f"annotations[{j}]")
    cands = []
    for iid, file_name in meta.items():
        ref = f"{path.name} image {iid} ({file_name})"
        cands.append(Candidate(image_id=iid, captions=clean_captions(caps.get(iid, []), ref, log),
                               ref=ref, path=file_name, root=images))
    return keep_with_captions(cands, log)
