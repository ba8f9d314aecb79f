"""WebDataset tar shards: samples are tar members sharing a key (`000001.jpg` + `000001.txt` or
`.json`). Read with the stdlib `tarfile` (the webdataset package would add a dependency and a
decode path we do not need). Nothing grows with the shard set but the image ids seen (to drop
repeats): each split is one pass over the shards, a shard at a time, that indexes a shard's samples
(image offset, captions), yields them and forgets them; images are read by seek. A sample's split is
its shard's (`train`/`val`/`test` in its path) or, in a shard set without such names, a seeded hash
of its key (cc3m.hashed_split), so no pass needs the whole list. Shards are plain `.tar`."""

from __future__ import annotations

import glob
import json
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterator

from capalign.errors import InputError, MissingError

from . import fetch_report as R
from .cc3m import hashed_split
from .records import Candidate, clean_captions, usable
from .fetch_report import SkipLog
from .splits import SPLITS, canonical_split, split_caps

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_SPLIT_WORD = re.compile(r"(?<![a-z])(train|training|validation|valid|val|dev|test)(?![a-z])")


def expand_shards(spec: str) -> list[Path]:
    """Shards named by a file, a folder (all *.tar below it), a glob, or a `{000..009}` range."""
    p = Path(spec)
    if p.is_dir():
        return sorted(p.rglob("*.tar"))
    if p.is_file():
        return [p]
    m = _BRACE.search(spec)
    if m:  # webdataset's brace notation; zero padding follows the first bound
        a, b = m.group(1), m.group(2)
        names = [spec[:m.start()] + str(i).zfill(len(a)) + spec[m.end():] for i in range(int(a), int(b) + 1)]
        return [s for n in names for s in expand_shards(n)]
    return sorted(Path(x) for x in glob.glob(spec))


def is_webdataset(spec: str) -> bool:
    p = Path(spec)
    if p.is_dir():
        return any(p.rglob("*.tar"))
    return spec.endswith(".tar") or ((_BRACE.search(spec) or "*" in spec) and ".tar" in spec)


def _split_of(shard: Path, base: Path) -> str | None:
    rel = shard.relative_to(base) if shard.is_relative_to(base) else Path(shard.name)
    for part in rel.parts:
        m = _SPLIT_WORD.search(part.lower())
        if m:
            return canonical_split(m.group(1))
    return None


def _captions(ext: str, data: bytes) -> list:
    if ext == "json":
        doc = json.loads(data.decode("utf-8-sig"))
        if not isinstance(doc, dict):
            raise ValueError("json member is not an object")
        for k in ("captions", "caption", "text", "sentences"):
            if k in doc:
                v = doc[k]
                return v if isinstance(v, list) else [v]
        raise ValueError("json member has no captions/caption/text key")
    return data.decode("utf-8-sig").splitlines() or [""]


class _Unlogged(SkipLog):
    """A log that counts nothing: what a pass reads of another split's samples is that split's to report."""

    def skip(self, reason: str, record: str, detail: str = "") -> None:
        pass


def _open(shard: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(shard, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"{shard}: not a readable uncompressed tar shard ({e}); "
                         "decompress it or pass the right file.") from None


def index_shard(shard: Path, log: SkipLog, wanted: Callable[[str], bool] | None = None,
                log_of: Callable[[str], SkipLog] | None = None) -> list[Candidate]:
    """One shard's samples (those whose key is `wanted`) with an image, in tar order, their captions
    cleaned (maybe none left). A cut-off shard is counted in `log`, a sample's skips in `log_of(key)`
    (default `log`)."""
    tf = _open(shard)
    samples: dict[str, dict] = {}
    size = shard.stat().st_size
    cut = False
    with tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                if m.offset_data + m.size > size:
                    log.skip(R.TRUNCATED_SHARD, f"{shard}:{m.name}", "member cut off by the end of the file")
                    cut = True
                    break
                d, _, base = m.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                key = f"{d}/{stem}" if d else stem
                if wanted is not None and not wanted(key):
                    continue
                s = samples.setdefault(key, {"image": None, "caps": [], "bad": None})
                ext = ext.lower()
                if ext in IMAGE_EXTS and s["image"] is None:
                    s["image"] = (m.offset_data, m.size)
                elif ext in ("txt", "caption", "json"):
                    try:
                        s["caps"] += _captions(ext, tf.extractfile(m).read())
                    except (ValueError, UnicodeDecodeError, RecursionError) as e:
                        s["bad"] = f"{m.name}: {e}"
        except (tarfile.TarError, EOFError, OSError) as e:
            log.skip(R.TRUNCATED_SHARD, str(shard), f"stopped after {len(samples)} samples: {e}")
            cut = True
        if not cut:  # tarfile stops silently at a cut header: insist on the end-of-archive zero block
            with open(shard, "rb") as f:
                f.seek(tf.offset)
                tail = f.read(512)
            if len(tail) < 512 or tail.strip(b"\0"):
                log.skip(R.TRUNCATED_SHARD, str(shard),
                         f"no end-of-archive marker at byte {tf.offset}: later samples are lost")
    cands = []
    for key, s in samples.items():
        ref, slog = f"{shard.name}:{key}", log_of(key) if log_of else log
        if s["bad"]:
            slog.skip(R.BAD_SAMPLE, ref, s["bad"])
        elif s["image"] is None:
            slog.skip(R.NO_IMAGE, ref)
        else:
            cands.append(Candidate(image_id=key, captions=clean_captions(s["caps"], ref, slog), ref=ref,
                                   tar=(shard, *s["image"])))
    return cands


class ShardSet:
    """The shards a spec names and the rule that gives each sample its split: its shard's split
    word (a shard without one joins train), or, when no shard path has one, the seeded hash of its
    key. A named set without validation or test shards takes them from train by the same hash."""

    def __init__(self, spec: str, seed: int) -> None:
        self.shards = expand_shards(spec)
        if not self.shards:
            raise MissingError(f"no .tar shards match {spec}; pass a shard, a folder of shards or a pattern.")
        for shard in self.shards:  # an unreadable shard stops the fetch before anything is written
            _open(shard).close()
        base = Path(spec) if Path(spec).is_dir() else Path(spec).parent
        words = {s: _split_of(s, base) for s in self.shards}
        self.named = any(words.values())
        self.home = {s: (words[s] or "train") if self.named else None for s in self.shards}
        homes = set(self.home.values())
        self.carved = {s for s in SPLITS[1:] if s not in homes} if "train" in homes else set()
        self.seed = seed

    def split(self, shard: Path, key: str) -> str:
        home = self.home[shard]
        if home is None or (home == "train" and self.carved):
            hashed = hashed_split(key, self.seed)
            return hashed if home is None or hashed in self.carved else "train"
        return home

    def _may_hold(self, shard: Path, split: str) -> bool:
        home = self.home[shard]
        return home in (None, split) or (home == "train" and split in self.carved)

    def candidates(self, split: str, log: SkipLog) -> Iterator[Candidate]:
        """The usable samples of `split`, in shard order, a shard indexed at a time. An image id is
        kept the first time it is seen in the whole set, so in a named set every shard up to the
        last that may hold `split` is read; each skip is counted by the pass of its sample's split
        (a cut-off shard by its own split's, or train's)."""
        held = [i for i, s in enumerate(self.shards) if self._may_hold(s, split)]
        unlogged, seen = _Unlogged(), set()
        for shard in self.shards[:held[-1] + 1] if held else []:
            own = (self.home[shard] or "train") == split
            wanted = None if self.named else (lambda key: self.split(shard, key) == split)
            route = lambda key: log if self.split(shard, key) == split else unlogged  # noqa: E731
            for c in index_shard(shard, log if own else unlogged, wanted, route):
                c.split = self.split(shard, c.image_id)
                if usable(c, seen, route(c.image_id)) and c.split == split:
                    yield c


def webdataset_plan(spec: str, seed: int, limit: int | None, log: SkipLog) -> dict:
    """A split plan (pipeline.Plan) that streams the shards: `limit` caps each split of a named
    set, and is shared 90/5/5 otherwise."""
    shards = ShardSet(spec, seed)
    caps = dict.fromkeys(SPLITS, limit) if shards.named else split_caps(limit)
    return {s: (shards.candidates(s, log), caps[s]) for s in SPLITS}
