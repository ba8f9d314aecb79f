"""Hugging Face datasets (hub names and any dataset id) turned into a split plan of candidates.

Images are read undecoded (`Image(decode=False)`) and decoded once by our own normaliser, so the
same bad-record checks apply; rows are pulled lazily from Arrow, so memory stays flat.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from datasets import DatasetDict, Image

from capalign.errors import InputError
from capalign.usertext import id_text

from . import fetch_report as R
from .records import Candidate, clean_captions
from .fetch_report import SkipLog
from .splits import canonical_split, held_out_size

CAPTION_COLUMNS = ("captions", "caption", "sentences", "text", "alt_text")


@dataclass
class HubSpec:
    """Where a hub name's data is and which columns hold image (or URL), captions and id."""

    repo: str
    config: str | None = None
    image: str | None = None          # image column (None: auto-detect an Image feature)
    url: str | None = None            # or a URL column, downloaded in parallel
    captions: tuple[str, ...] = ()    # caption columns (str, list of str, or {"raw": ...})
    id_column: str | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


HUB_SPECS: dict[str, HubSpec] = {
    "flickr8k": HubSpec("jxie/flickr8k", image="image",
                        captions=tuple(f"caption_{i}" for i in range(5)),
                        note="official Flickr8k splits (6000/1000/1000)"),
    "flickr30k": HubSpec("umaru97/flickr30k_train_val_test", image="image", captions=("caption",),
                         id_column="img_id", note="Karpathy splits (29000/1014/1000)"),
    "coco": HubSpec("yerevann/coco-karpathy", url="url", captions=("sentences",), id_column="cocoid",
                    note="Karpathy splits, restval joins train; images downloaded from cocodataset.org"),
    "cc3m": HubSpec("google-research-datasets/conceptual_captions", config="unlabeled",
                    url="image_url", captions=("caption",),
                    note="URL list; the hub's validation split is halved into validation and test"),
}


def _texts(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return [value.get("raw", value.get("text"))]
    if isinstance(value, (list, tuple)):
        return [v.get("raw", v.get("text")) if isinstance(v, dict) else v for v in value]
    return [value]


def resolve_columns(ds: DatasetDict, spec: HubSpec, name: str) -> HubSpec:
    """Fill in image and caption columns from the features when the spec leaves them open."""
    first = next(iter(ds.values()))
    cols = first.column_names
    image, captions = spec.image, spec.captions
    if spec.url is None and image is None:
        found = [c for c, f in first.features.items() if isinstance(f, Image)]
        if not found:
            raise InputError(f"{name} has no image column (columns: {cols}); pass --image-column NAME.")
        image = found[0]
    if not captions:
        found = [c for c in CAPTION_COLUMNS if c in cols]
        if not found:
            raise InputError(f"{name} has no caption column (columns: {cols}); pass --caption-column NAME.")
        captions = (found[0],)
    for c in [image, spec.url, *captions, spec.id_column]:
        if c is not None and c not in cols:
            raise InputError(f"{name} has no column {c!r} (columns: {cols}); check --image-column / --caption-column.")
    return HubSpec(spec.repo, spec.config, image, spec.url, tuple(captions), spec.id_column, spec.note)


def split_indices(ds: DatasetDict, seed: int, name: str) -> dict[str, list[tuple[str, Any]]]:
    """Map the source's splits onto train/validation/test as (source split, indices) parts.

    restval joins train; a source without test halves its validation split (seeded); a source
    without validation takes a seeded 5% of train (and 5% more for test if it has no test either).
    """
    parts: dict[str, list[tuple[str, Any]]] = {"train": [], "validation": [], "test": []}
    for src in ds:
        target = canonical_split(src)
        if target:
            parts[target].append((src, range(len(ds[src]))))
    if not parts["train"]:
        raise InputError(f"{name} has no train split (splits: {list(ds)}); it cannot be used as captions data.")
    rng = random.Random(seed)
    if not parts["test"] and parts["validation"]:
        src, idx = parts["validation"][0]
        order = list(idx)
        rng.shuffle(order)
        half = len(order) // 2
        parts["validation"], parts["test"] = [(src, sorted(order[:half]))], [(src, sorted(order[half:]))]
    for s in ("validation", "test"):
        if not parts[s]:
            src, idx = parts["train"][0]
            order = list(idx)
            rng.shuffle(order)
            k = held_out_size(len(order))
            parts[s], parts["train"][0] = [(src, sorted(order[:k]))], (src, sorted(order[k:]))
    return parts


def hf_candidates(ds: DatasetDict, spec: HubSpec, parts: list[tuple[str, Any]], log: SkipLog) -> Iterator[Candidate]:
    """Lazily yield one candidate per row of the given (split, indices) parts."""
    seen: set[str] = set()
    for src, idx in parts:
        d = ds[src]
        if spec.image:
            d = d.cast_column(spec.image, Image(decode=False))
        if not isinstance(idx, range) or idx != range(len(d)):
            d = d.select(idx)
        for i, row in enumerate(d):
            iid = id_text(row[spec.id_column]) if spec.id_column else f"{src}-{idx[i]}"
            ref = f"{spec.repo}[{src}][{idx[i]}]"
            if iid is None:
                log.skip(R.BAD_ID, ref, f"image_id {row[spec.id_column]!r}")
                continue
            raw = [t for c in spec.captions for t in _texts(row[c])]
            if spec.id_column:
                if iid in seen:
                    log.skip(R.DUPLICATE, ref, f"image_id {iid} already seen")
                    continue
                seen.add(iid)
            caps = clean_captions(raw, ref, log)
            if not caps:
                log.skip(R.NO_CAPTIONS, ref)
                continue
            if spec.url:
                url = row[spec.url]
                if not url:
                    log.skip(R.NO_IMAGE, ref, "empty URL")
                    continue
                yield Candidate(image_id=iid, captions=caps, ref=ref, url=str(url))
                continue
            img = row[spec.image]
            data = img.get("bytes") if isinstance(img, dict) else None
            if data is None and isinstance(img, dict) and img.get("path") and Path(img["path"]).is_file():
                data = Path(img["path"]).read_bytes()
            if data is None:
                log.skip(R.NO_IMAGE, ref)
                continue
            yield Candidate(image_id=iid, captions=caps, ref=ref, data=data)
