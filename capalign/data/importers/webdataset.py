"""WebDataset tar shards: samples are tar members sharing a key (`000001.jpg` + `000001.txt` or
`.json`). Read with the stdlib `tarfile` (the webdataset package would add a dependency and a
decode path we do not need): one pass indexes each sample's image offset and its captions, then
images are read by seek, so nothing but captions is held in memory. Shards are plain `.tar`."""

from __future__ import annotations

import glob
import json
import re
import tarfile
from pathlib import Path

from capalign.errors import InputError, MissingError

from . import fetch_report as R
from .records import Candidate, clean_captions, keep_with_captions
from .fetch_report import SkipLog
from .splits import canonical_split

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


def _index(shard: Path, split: str | None, log: SkipLog) -> list[Candidate]:
    try:
        tf = tarfile.open(shard, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"{shard}: not a readable uncompressed tar shard ({e}); "
                         "decompress it or pass the right file.") from None
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
        ref = f"{shard.name}:{key}"
        if s["bad"]:
            log.skip(R.BAD_SAMPLE, ref, s["bad"])
        elif s["image"] is None:
            log.skip(R.NO_IMAGE, ref)
        else:
            cands.append(Candidate(image_id=key, captions=clean_captions(s["caps"], ref, log), ref=ref,
                                   tar=(shard, *s["image"]), split=split))
    return cands


def webdataset_candidates(spec: str, log: SkipLog) -> list[Candidate]:
    """Candidates for every sample of every shard; splits come from train/val/test in shard
    paths (other shards join train) or, if no shard is so named, are made by the seeded split."""
    shards = expand_shards(spec)
    if not shards:
        raise MissingError(f"no .tar shards match {spec}; pass a shard, a folder of shards or a pattern.")
    base = Path(spec) if Path(spec).is_dir() else Path(spec).parent
    splits = {s: _split_of(s, base) for s in shards}
    named = any(splits.values())
    cands = [c for s in shards for c in _index(s, (splits[s] or "train") if named else None, log)]
    return keep_with_captions(cands, log)
