"""The paired CIFAR-100 task: two CIFAR images side by side, captions naming both classes.

From uoft-cs/cifar100 (or any dataset with an image and a ClassLabel column). Each source image is
used at most once; pairs always show two different classes; a seeded 5% of the train images is
held out (before pairing) for validation. Rows carry `objects` = [left class, right class].
"""

from __future__ import annotations

import io
import random
from typing import Iterator

from datasets import ClassLabel, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

from capalign.errors import InputError

from . import fetch_report as R
from capalign.data.images import BadImage, normalize_image
from .pipeline import FEATURES
from .fetch_report import SkipLog
from .splits import canonical_split, carve

REPO = "uoft-cs/cifar100"
PAIR_FEATURES = Features({**FEATURES, "objects": List(Value("string"))})


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def pair_captions(left: str, right: str) -> list[str]:
    """Three phrasings naming both classes and their sides."""
    a, b = _article(left), _article(right)
    return [f"{a} on the left and {b} on the right", f"{a} next to {b}",
            f"{b} on the right and {a} on the left"]


def make_pairs(labels: list[int], order: list[int]) -> list[tuple[int, int]]:
    """Pair indices in `order` greedily so the two images of a pair have different labels."""
    pairs, waiting = [], []
    for i in order:
        for k, j in enumerate(waiting):
            if labels[j] != labels[i]:
                pairs.append((waiting.pop(k), i))
                break
        else:
            waiting.append(i)
    return pairs


def _columns(ds: DatasetDict) -> tuple[str, str]:
    d = next(iter(ds.values()))
    image = next((c for c, f in d.features.items() if isinstance(f, Image)), None)
    label = next((c for c in ("fine_label", "label") if isinstance(d.features.get(c), ClassLabel)), None)
    if image is None or label is None:
        raise InputError(f"{REPO}-style data needs an image and a fine_label/label class column; got {d.column_names}.")
    return image, label


def pair_generators(ds: DatasetDict, seed: int, limit: int | None, image_size: int, log: SkipLog):
    """Per-split row generators for write_prepared (limit = pairs per split)."""
    image, label = _columns(ds)
    names = [n.replace("_", " ") for n in ds[next(iter(ds))].features[label].names]
    parts: dict[str, tuple[str, list[int]]] = {}
    for src in ds:
        s = canonical_split(src)
        if s:
            parts[s] = (src, list(range(len(ds[src]))))
    if "train" not in parts:
        raise InputError(f"{REPO} has no train split (splits: {list(ds)}).")
    if "validation" not in parts:
        src, idx = parts["train"]
        rest, held = carve(idx, seed)
        parts["train"], parts["validation"] = (src, rest), (src, held)
    if "test" not in parts:
        src, idx = parts["train"]
        rest, held = carve(idx, seed + 1)
        parts["train"], parts["test"] = (src, rest), (src, held)

    def gen(split: str, counts: dict) -> Iterator[dict]:
        src, idx = parts[split]
        d = ds[src].cast_column(image, Image(decode=False))
        labels = d[label]
        order = list(idx)
        random.Random(f"{seed}-{split}").shuffle(order)
        pairs = make_pairs(labels, order)
        for a, b in pairs:
            if limit is not None and counts["rows"] >= limit:
                return
            try:
                tiles = [PILImage.open(io.BytesIO(normalize_image(d[i][image]["bytes"] or b"", 0)))
                         for i in (a, b)]
            except BadImage as e:
                log.skip(e.reason, f"{REPO}[{src}] pair ({a}, {b})", e.detail)
                continue
            h = max(t.height for t in tiles)
            canvas = PILImage.new("RGB", (tiles[0].width + tiles[1].width, h), (255, 255, 255))
            canvas.paste(tiles[0], (0, 0))
            canvas.paste(tiles[1], (tiles[0].width, 0))
            buf = io.BytesIO()
            canvas.save(buf, format="PNG")
            left, right = names[labels[a]], names[labels[b]]
            caps = pair_captions(left, right)
            counts["rows"] += 1
            counts["captions"] += len(caps)
            yield {"image_id": f"{split}-{a}-{b}",
                   "image": {"bytes": normalize_image(buf.getvalue(), image_size), "path": None},
                   "captions": caps, "objects": [left, right]}
        unpaired = len(order) - 2 * len(pairs)
        if unpaired:
            log.skip(R.UNPAIRED, f"{REPO}[{src}] {split}", f"{unpaired} image(s) left without a partner")

    return {s: (lambda counts, s=s: gen(s, counts)) for s in ("train", "validation", "test")}
