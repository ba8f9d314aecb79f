"""The preference pair: what every pair source yields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)  # no per-pair __dict__: a split's pairs are many
class PreferencePair:
    """One preference: for image `row` of a split (or the file `image`; neither for a text-only
    pair), `chosen` is preferred over `rejected`."""

    row: int | None
    chosen: str
    rejected: str
    source: str  # "ranked", "ranked+reference", "corrupted" or "file"
    image: Path | None = None
