"""Flickr8k caption files: `captions.txt` (CSV `image,caption`) and `Flickr8k.token.txt`
(`name.jpg#0<TAB>caption`), with the official split lists when they sit beside the file."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from capalign.errors import InputError, MissingError
from capalign.usertext import iter_lines, read_text

from . import fetch_report as R
from .records import Candidate, clean_captions, keep_with_captions, require
from .fetch_report import SkipLog

SPLIT_LISTS = {"train": "Flickr_8k.trainImages.txt", "validation": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
IMAGE_DIRS = ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset")


def is_token_file(path: Path) -> bool:
    return path.name.lower().endswith(".token.txt")


def is_captions_csv(path: Path) -> bool:
    if path.suffix.lower() not in (".txt", ".csv"):
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # a sniff: decoding is checked on reading
        head = f.readline(256).strip().lower().replace(" ", "")
    return head == "image,caption"


def _read_token(path: Path) -> dict[str, list[str]]:
    caps: dict[str, list[str]] = defaultdict(list)
    for n, line in enumerate(iter_lines(path, "caption file"), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        require("\t" in line, path, f"line {n}", "expected 'name.jpg#N<TAB>caption'")
        name, caption = line.split("\t", 1)
        name = name.split("#", 1)[0].strip()
        require(bool(name), path, f"line {n}", "empty image name")
        caps[name].append(caption)
    return caps


def _read_csv(path: Path) -> dict[str, list[str]]:
    caps: dict[str, list[str]] = defaultdict(list)
    reader = csv.reader(iter_lines(path, "caption file"))
    try:
        for row in reader:
            n = reader.line_num
            if n == 1 or not row or not "".join(row).strip():
                continue
            require(len(row) >= 2 and row[0].strip() != "", path, f"line {n}",
                    "expected 'image,caption'")
            caps[row[0].strip()].append(",".join(row[1:]))
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num}: malformed CSV ({exc}); fix that line.") from None
    return caps


def _split_lists(folder: Path) -> dict[str, str] | None:
    found = {s: folder / name for s, name in SPLIT_LISTS.items() if (folder / name).exists()}
    if not found:
        return None
    split_of = {}
    for split, p in found.items():
        for line in read_text(p, "split list").splitlines():
            if line.strip():
                split_of[line.strip()] = split
    return split_of


def default_images_dir(path: Path) -> Path:
    """The image folder beside a Flickr caption file (Images/ or Flicker8k_Dataset/)."""
    for name in IMAGE_DIRS:
        if (path.parent / name).is_dir():
            return path.parent / name
    raise MissingError(f"no image folder found beside {path} (looked for {', '.join(IMAGE_DIRS)}); "
                       "pass --images DIR.")


def flickr_candidates(path: Path, images: Path, log: SkipLog) -> list[Candidate]:
    """One candidate per image (id = file stem); splits from Flickr_8k.*Images.txt when present
    (images in no list are skipped as `not_in_any_split_list`)."""
    caps = _read_token(path) if is_token_file(path) else _read_csv(path)
    split_of = _split_lists(path.parent)
    cands = []
    for name, raw in caps.items():
        ref = f"{path.name} {name}"
        split = None
        if split_of is not None:
            split = split_of.get(name)
            if split is None:
                log.skip(R.NOT_IN_SPLIT, ref)
                continue
        cands.append(Candidate(image_id=Path(name).stem, captions=clean_captions(raw, ref, log),
                               ref=ref, path=name, root=images, split=split))
    if split_of is not None:
        for name, split in split_of.items():
            if name not in caps:
                log.skip(R.NO_CAPTIONS, f"{SPLIT_LISTS[split]} {name}")
    return keep_with_captions(cands, log)
