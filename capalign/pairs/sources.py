"""Preference pairs from files and prepared preference datasets (everything but `--pairs auto`).

- A pairs file: JSONL, JSON (a list) or CSV with `image`, `chosen`, `rejected`; image paths are
  relative to the file. Pairwise human judgments (PASCAL-50S style) are read from the same formats
  with `image`, `caption_a`, `caption_b`, `votes_a`, `votes_b`: the caption with more votes is
  chosen, ties are skipped.
- A prepared preference dataset (`capalign fetch ultrafeedback`): `prompt` / `chosen` / `rejected`
  text without images, filtered to caption-length answers, used as image-free pairs that shape the
  decoder's language prior only.
Bad records are skipped and counted by reason, never fatal; a malformed file exits 2 naming the line.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from capalign.data.importers.records import read_jsonl
from capalign.data.prepared import open_prepared, open_saved
from capalign.data.store import DEFAULT_DATA_ROOT, get_split, is_prepared
from capalign.errors import InputError, MissingError
from capalign.usertext import is_text, read_json, read_text

MAX_CAPTION_WORDS = 30  # an image-free pair is kept only when both answers are caption-length


@dataclass
class LoadedPairs:
    """Pairs read from one source plus the records skipped, by reason."""

    pairs: list[dict]  # {"image": Path | None, "chosen": str, "rejected": str}
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return f"{len(self.pairs)} pairs; skipped: {skipped}"


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) for every record of a JSONL, JSON or CSV file."""
    if path.suffix == ".jsonl":
        return [(f"line {number}", record) for number, record in read_jsonl(path, "pairs file")]
    if path.suffix == ".json":
        data = read_json(path, "pairs file")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{path} must hold a JSON list of objects.")
        return [(f"item {i}", r) for i, r in enumerate(data)]
    if path.suffix == ".csv":
        reader = csv.DictReader(read_text(path, "pairs file").splitlines(keepends=True))
        try:
            return [(f"line {reader.line_num}", dict(r)) for r in reader]
        except csv.Error as exc:
            raise InputError(f"{path} line {reader.line_num}: malformed CSV ({exc}); fix that line.") from None
    raise InputError(f"Pairs file {path} must end in .jsonl, .json or .csv.")


def _caption(value) -> str | None:
    """A caption's text, "" when empty or null, None when it is not text (a number, a list, a lone
    surrogate)."""
    if value is None:
        return ""
    return value.strip() if is_text(value) else None


def _choose(record: dict, where: str, path: Path) -> tuple[str | None, str | None] | None:
    """(chosen, rejected) from either form (see `_caption`); None for a tie in votes."""
    if "chosen" in record and "rejected" in record:
        return _caption(record["chosen"]), _caption(record["rejected"])
    if {"caption_a", "caption_b", "votes_a", "votes_b"} <= set(record):
        try:
            a, b = float(record["votes_a"]), float(record["votes_b"])
        except (TypeError, ValueError):
            raise InputError(f"{path} {where}: votes_a / votes_b must be numbers.") from None
        if a == b:
            return None
        first, second = _caption(record["caption_a"]), _caption(record["caption_b"])
        return (first, second) if a > b else (second, first)
    raise InputError(f"{path} {where}: needs chosen and rejected (or caption_a, caption_b, votes_a, votes_b).")


def load_pairs_file(path: Path) -> LoadedPairs:
    """Read image–caption preference pairs; images must lie inside the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"Pairs file {path} does not exist.")
    root = path.parent.resolve()
    loaded = LoadedPairs([])
    for where, record in _records(path):
        if "image" not in record:
            raise InputError(f"{path} {where}: missing the 'image' field.")
        choice = _choose(record, where, path)
        if choice is None:
            loaded.skipped["tied_votes"] += 1
            continue
        chosen, rejected = choice
        if chosen is None or rejected is None:
            loaded.skipped["caption_not_text"] += 1
            continue
        if not chosen or not rejected:
            loaded.skipped["empty_caption"] += 1
            continue
        if chosen == rejected:
            loaded.skipped["chosen_equals_rejected"] += 1
            continue
        name = record["image"]
        if not is_text(name) or not name.strip() or "\0" in name:
            loaded.skipped["bad_image_path"] += 1
            continue
        try:
            image = (root / name).resolve()
            found = image.is_file()
        except OSError:  # a name too long, a symlink loop
            loaded.skipped["bad_image_path"] += 1
            continue
        if not image.is_relative_to(root):
            loaded.skipped["path_escapes_folder"] += 1
            continue
        if not found:
            loaded.skipped["missing_image"] += 1
            continue
        loaded.pairs.append({"image": image, "chosen": chosen, "rejected": rejected})
    return loaded


def load_text_pairs(path: Path) -> LoadedPairs:
    """Image-free pairs from a prepared preference dataset, kept when both answers are caption-length."""
    data = open_prepared(path) if is_prepared(path) else open_saved(path)
    split = get_split(data, "train") if isinstance(data, datasets.DatasetDict) else data
    missing = {"chosen", "rejected"} - set(split.column_names)
    if missing:
        raise InputError(f"{path} is not a preference dataset (no {', '.join(sorted(missing))} column).")
    loaded = LoadedPairs([])
    for chosen, rejected in zip(split["chosen"], split["rejected"]):
        chosen, rejected = _caption(chosen), _caption(rejected)
        if chosen is None or rejected is None:
            loaded.skipped["caption_not_text"] += 1
        elif not chosen or not rejected or chosen == rejected:
            loaded.skipped["bad_pair"] += 1
        elif max(len(chosen.split()), len(rejected.split())) > MAX_CAPTION_WORDS:
            loaded.skipped["longer_than_a_caption"] += 1
        else:
            loaded.pairs.append({"image": None, "chosen": chosen, "rejected": rejected})
    return loaded


def load_pair_source(source: str) -> LoadedPairs:
    """A pairs file, or a prepared preference dataset folder (or its name under data/)."""
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".csv"):
        return load_pairs_file(path)
    for candidate in (path, DEFAULT_DATA_ROOT / source):
        if is_prepared(candidate) or (candidate / "dataset_info.json").is_file():
            return load_text_pairs(candidate)
    raise MissingError(f"--pairs {source}: not auto, corrupted, a pairs file (.jsonl/.json/.csv) or a prepared preference dataset; "
                       f"for UltraFeedback run `capalign fetch ultrafeedback` first.")
