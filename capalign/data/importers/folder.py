"""A folder of images with `metadata.jsonl` or `metadata.csv` (the Hugging Face imagefolder
layout): `file_name` plus a caption column holding one caption or a list; several rows may name
the same file. `train/`, `validation/` (or `val/`), `test/` subfolders with their own metadata
define splits. Image files that no metadata row names are counted as images without captions."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from capalign.errors import InputError
from capalign.usertext import iter_lines

from . import fetch_report as R
from .records import Candidate, clean_captions, keep_with_captions, read_jsonl, require
from .fetch_report import SkipLog
from .splits import canonical_split

CAPTION_COLUMNS = ("captions", "caption", "text", "sentences")
FILE_COLUMNS = ("file_name", "image", "file", "filename")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"}


def metadata_file(folder: Path) -> Path | None:
    for name in ("metadata.jsonl", "metadata.csv"):
        if (folder / name).is_file():
            return folder / name
    return None


def split_folders(folder: Path) -> dict[str, Path]:
    """Subfolders named like splits that hold their own metadata file."""
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        split = canonical_split(sub.name)
        if split and sub.name != "restval" and metadata_file(sub):
            found[split] = sub
    return found


def is_image_folder(folder: Path) -> bool:
    return folder.is_dir() and (metadata_file(folder) is not None or bool(split_folders(folder)))


def _pick(keys, wanted: str | None, options, path: Path, what: str) -> str:
    if wanted:
        require(wanted in keys, path, "header", f"has no column {wanted!r} (columns: {sorted(keys)})")
        return wanted
    for k in options:
        if k in keys:
            return k
    raise InputError(f"{path}: no {what} column among {sorted(keys)}; "
                     f"pass --{'caption' if what == 'caption' else 'image'}-column NAME.")


def _csv_rows(meta: Path, caption_column: str | None):
    reader = csv.DictReader(iter_lines(meta, "metadata file"))
    try:
        keys = reader.fieldnames or []
        fcol = _pick(keys, None, FILE_COLUMNS, meta, "file name")
        ccol = _pick(keys, caption_column, CAPTION_COLUMNS, meta, "caption")
        for row in reader:
            yield reader.line_num, row.get(fcol), [row.get(ccol)]
    except csv.Error as exc:
        raise InputError(f"{meta} line {reader.line_num}: malformed CSV ({exc}); fix that line.") from None


def _rows(meta: Path, caption_column: str | None):
    """Yield (line number, file name, list of raw captions) from metadata.jsonl / .csv; the file name
    is whatever the row holds (checked by the caller)."""
    if meta.suffix == ".csv":
        yield from _csv_rows(meta, caption_column)
        return
    fcol = ccol = None
    for n, row in read_jsonl(meta, "metadata file"):
        if fcol is None:
            fcol = _pick(row.keys(), None, FILE_COLUMNS, meta, "file name")
            ccol = _pick(row.keys(), caption_column, CAPTION_COLUMNS, meta, "caption")
        require(fcol in row, meta, f"line {n}", f"needs a {fcol!r} string")
        value = row.get(ccol)
        yield n, row[fcol], value if isinstance(value, list) else [] if value is None else [value]


def _candidates(folder: Path, split: str | None, caption_column: str | None, log: SkipLog):
    meta = metadata_file(folder)
    caps: dict[str, list] = defaultdict(list)
    for n, name, raw in _rows(meta, caption_column):
        if not isinstance(name, str) or not name.strip():
            log.skip(R.BAD_NAME, f"{meta.relative_to(folder.parent)} line {n}", f"file name {name!r}")
            continue
        caps[name.replace("\\", "/")].extend(raw)
    named = {str(Path(n)) for n in caps}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.suffix.lower() in IMAGE_EXTS and str(rel) not in named and not any(
                part.startswith(".") for part in rel.parts):
            log.skip(R.NO_CAPTIONS, str(p.relative_to(folder.parent)), "no metadata row names it")
    for name, raw in caps.items():
        ref = f"{meta.relative_to(folder.parent)} {name}"
        iid = f"{split}/{name}" if split else name
        yield Candidate(image_id=iid, captions=clean_captions(raw, ref, log), ref=ref, path=name,
                        root=folder, split=split)


def folder_candidates(folder: Path, caption_column: str | None, log: SkipLog) -> list[Candidate]:
    """Candidates for every image named in the folder's metadata (id = its relative file name)."""
    subs = split_folders(folder)
    if subs:
        cands = [c for split, sub in subs.items() for c in _candidates(sub, split, caption_column, log)]
    else:
        cands = list(_candidates(folder, None, caption_column, log))
    return keep_with_captions(cands, log)
