"""The common in-between form every importer produces: one `Candidate` per image."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from capalign.errors import InputError
from capalign.usertext import id_text, is_text, iter_lines, read_json

from . import fetch_report as R
from .fetch_report import SkipLog


@dataclass
class Candidate:
    """One image before its pixels are read: where it is, its captions, and (maybe) its split.

    Exactly one locator is set: `path` (relative to `root`), `data` (encoded bytes), `url`, or
    `tar` (shard path, byte offset, size). `ref` names the record in skip reports.
    """

    image_id: str
    captions: list[str]
    ref: str
    path: str | None = None
    root: Path | None = None
    data: bytes | None = None
    url: str | None = None
    tar: tuple[Path, int, int] | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def clean_captions(raw: Iterable[Any], ref: str, log: SkipLog) -> list[str]:
    """Strip captions; empty or null ones are skipped and counted as `empty_caption`, numbers, lists
    and strings that cannot be stored as UTF-8 (a lone surrogate) as `caption_not_text`."""
    out = []
    for i, c in enumerate(raw):
        if c is not None and not is_text(c):
            log.skip(R.NOT_TEXT, f"{ref} caption {i}", repr(c))
            continue
        text = c.strip() if c is not None else ""
        if text:
            out.append(" ".join(text.split()))
        else:
            log.skip(R.EMPTY_CAPTION, f"{ref} caption {i}", repr(c))
    return out


def usable(c: Candidate, seen: set[str], log: SkipLog) -> bool:
    """Whether `c` is kept: its file name and id can be used (no NUL byte, no lone surrogate, a
    string), it has captions and its image id is not in `seen` (which a kept id joins); a candidate
    that is not is counted in `log`."""
    if c.path is not None and (not is_text(c.path) or "\0" in c.path):
        log.skip(R.BAD_NAME, c.ref, f"file name {c.path!r}")
    elif id_text(c.image_id) is None:
        log.skip(R.BAD_ID, c.ref, f"image_id {c.image_id!r}")
    elif not c.captions:
        log.skip(R.NO_CAPTIONS, c.ref)
    elif c.image_id in seen:
        log.skip(R.DUPLICATE, c.ref, f"image_id {c.image_id} already seen")
    else:
        seen.add(c.image_id)
        return True
    return False


def keep_with_captions(cands: Iterable[Candidate], log: SkipLog) -> list[Candidate]:
    """The usable candidates (see `usable`), in order; the others are counted in `log`."""
    seen: set[str] = set()
    return [c for c in cands if usable(c, seen, log)]


def load_json(path: Path) -> Any:
    """Parse an annotation file; a syntax error becomes an InputError naming the file, line and column."""
    return read_json(path, "annotation file", "fix or re-download the file")


def read_jsonl(path: Path, what: str = "file"):
    """Yield (line number, object) for each non-blank line of a JSON Lines file (UTF-8, streamed);
    a line that is not a JSON object is an InputError naming the file and line."""
    for number, line in enumerate(iter_lines(path, what), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {number}: invalid JSON ({exc.msg}); fix that line.") from None
        except RecursionError:
            raise InputError(f"{path} line {number}: JSON nested too deeply; fix that line.") from None
        require(isinstance(record, dict), path, f"line {number}", "expected a JSON object")
        yield number, record


def require(cond: bool, path: Path, where: str, what: str) -> None:
    """Raise an InputError naming the file and key/line at fault when `cond` is false."""
    if not cond:
        raise InputError(f"{path} {where}: {what}; fix the annotation file or pass the right one.")
