"""Conceptual Captions style URL lists (`caption<TAB>url` TSV, as in Train_GCC-training.tsv).

The file is streamed, never held in memory: each row's split is a seeded hash of its URL
(about 90/5/5), and images are downloaded in parallel by `download.Downloader`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from capalign.usertext import iter_lines

from .records import Candidate, clean_captions, require
from .fetch_report import SkipLog
from . import fetch_report as R


def is_url_list(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".tsv"


def hashed_split(key: str, seed: int) -> str:
    """Deterministic ~90/5/5 split of a stream by hashing `seed:key`."""
    b = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:8], 16) % 100
    return "validation" if b < 5 else "test" if b < 10 else "train"


def _columns(first: list[str]) -> tuple[int, int, bool]:
    low = [c.strip().lower() for c in first]
    if "caption" in low and ("url" in low or "image_url" in low):
        return low.index("caption"), low.index("url") if "url" in low else low.index("image_url"), True
    return 0, 1, False


def url_list_candidates(path: Path, split: str | None, seed: int, log: SkipLog) -> Iterator[Candidate]:
    """Stream the candidates of one split (None: all rows) from a TSV URL list (header `caption<TAB>url` optional).
    A line without a tab, or whose URL is not http(s), is an InputError naming the line."""
    cap_i = url_i = None
    for n, line in enumerate(iter_lines(path, "URL list"), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        cols = line.split("\t")
        if cap_i is None:
            cap_i, url_i, header = _columns(cols)
            if header:
                continue
        require(len(cols) > max(cap_i, url_i), path, f"line {n}", "expected 'caption<TAB>url'")
        url = cols[url_i].strip()
        require(url.startswith(("http://", "https://")), path, f"line {n}",
                f"{url[:60]!r} is not an http(s) URL")
        if split is not None and hashed_split(url, seed) != split:
            continue
        ref = f"{path.name} line {n}"
        caps = clean_captions([cols[cap_i]], ref, log)
        if not caps:
            log.skip(R.NO_CAPTIONS, ref)
            continue
        yield Candidate(image_id=f"{path.stem}-{n}", captions=caps, ref=ref, url=url)
