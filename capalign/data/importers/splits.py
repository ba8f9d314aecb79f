"""Split names and the deterministic split used when a source defines none."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")
SPLITS = ("train", "validation", "test")
_ALIASES = {
    "train": "train", "training": "train", "restval": "train",
    "validation": "validation", "val": "validation", "valid": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}
HELD_OUT = 0.05  # fraction for validation and for test when we make the split ourselves


def canonical_split(name: str) -> str | None:
    """Map a source's split name (val, dev, restval, ...) to train/validation/test, else None."""
    return _ALIASES.get(str(name).strip().lower())


def held_out_size(n: int) -> int:
    """Size of validation (and of test) for n items: 5%, at least 1 once n >= 3."""
    return max(1, round(n * HELD_OUT)) if n >= 3 else 0


def seeded_split(items: Sequence[T], seed: int) -> dict[str, list[T]]:
    """Shuffle with `seed` and cut 90/5/5 into train/validation/test (deterministic)."""
    order = list(items)
    random.Random(seed).shuffle(order)
    k = held_out_size(len(order))
    return {"validation": order[:k], "test": order[k:2 * k], "train": order[2 * k:]}


def split_caps(limit: int | None) -> dict[str, int | None]:
    """Per-split caps that sum to `limit` with the same 90/5/5 ratio (None = no cap)."""
    if limit is None:
        return dict.fromkeys(SPLITS)
    k = held_out_size(limit)
    return {"train": limit - 2 * k, "validation": k, "test": k}


def carve(train: list[T], seed: int) -> tuple[list[T], list[T]]:
    """Take a seeded 5% of `train` out as a held-out split; returns (rest, held_out)."""
    order = list(train)
    random.Random(seed).shuffle(order)
    k = held_out_size(len(order))
    return order[k:], order[:k]
