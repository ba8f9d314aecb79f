"""Where streamed training samples come from, one shard at a time: webdataset `.tar` shards (indexed
a shard at a time by the importer's stdlib-tarfile reader, images read by seek) or a Hugging Face
dataset opened with `load_dataset(..., streaming=True)` (its data files are its shards). Each source
yields Candidates carrying captions and encoded image bytes; nothing but one shard's captions and
the current image is held. Bad records are skipped into a SkipLog, never raised mid-run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import datasets
import pyarrow as pa

from capalign.errors import InputError, MissingError
from capalign.usertext import printable

from .importers import fetch_report as R
from .importers.fetch_report import SkipLog
from .importers.hf_source import CAPTION_COLUMNS, _texts
from .importers.records import Candidate, clean_captions
from .importers.splits import canonical_split
from .importers.webdataset import _split_of, expand_shards, index_shard, is_webdataset

IMAGE_COLUMNS = ("image", "img", "jpg", "png")
# what a damaged data file raises inside datasets / pyarrow while it is being streamed
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, pa.ArrowException)


class ShardSource:
    """webdataset `.tar` shards; shard `i` is read by `read(i, log)`."""

    def __init__(self, shards: list[Path]):
        self.shards = list(shards)

    def __len__(self) -> int:
        return len(self.shards)

    def read(self, i: int, log: SkipLog) -> Iterator[Candidate]:
        """Shard `i`'s samples in tar order; an unreadable or cut shard yields what it can and is logged."""
        shard = self.shards[i]
        try:
            cands = index_shard(shard, log)  # one shard's captions and image offsets
            handle = open(shard, "rb")
        except (InputError, OSError) as e:
            log.skip(R.UNREADABLE, str(shard), str(e))
            return
        with handle:
            for c in cands:
                if not c.captions:
                    log.skip(R.NO_CAPTIONS, c.ref)
                    continue
                _, offset, size = c.tar
                handle.seek(offset)
                yield dataclasses.replace(c, data=handle.read(size), tar=None)


class HubSource:
    """One split of a streamed Hugging Face dataset; its data files are the shards."""

    def __init__(self, split: datasets.IterableDataset, name: str):
        self.name = name
        self.image, self.captions = _columns(split, name)
        self.split = split.cast_column(self.image, datasets.Image(decode=False))  # our decoder checks every image

    def __len__(self) -> int:
        return max(1, self.split.num_shards)

    def read(self, i: int, log: SkipLog) -> Iterator[Candidate]:
        """Shard `i`'s rows; a damaged data file ends the shard, logged."""
        part = self.split.shard(num_shards=len(self), index=i) if len(self) > 1 else self.split
        k = -1
        try:
            for k, row in enumerate(part):
                ref = f"{self.name}[shard {i}][{k}]"
                caps = clean_captions([t for c in self.captions for t in _texts(row.get(c))], ref, log)
                if not caps:
                    log.skip(R.NO_CAPTIONS, ref)
                    continue
                image = row.get(self.image)
                data = image.get("bytes") if isinstance(image, dict) else None
                if data is None and isinstance(image, dict) and image.get("path") and Path(image["path"]).is_file():
                    data = Path(image["path"]).read_bytes()  # a local image folder streams paths, as in hf_source
                if data is None:
                    log.skip(R.NO_IMAGE, ref)
                    continue
                yield Candidate(image_id=f"{i}-{k}", captions=caps, ref=ref, data=data)
        except _READ_ERRORS as e:
            log.skip(R.TRUNCATED_SHARD, f"{self.name}[shard {i}]", f"stopped after row {k}: {printable(str(e))[:160]}")


def _columns(split: datasets.IterableDataset, name: str) -> tuple[str, tuple[str, ...]]:
    """(image column, caption columns) from the features, or from the first row when a data format
    declares none."""
    features = split.features
    if features is None:
        try:
            columns = list(next(iter(split)))
        except StopIteration:
            raise InputError(f"{name}: the train split is empty; pass a dataset with rows.") from None
        images = [c for c in IMAGE_COLUMNS if c in columns]
    else:
        columns = list(features)
        images = [c for c, f in features.items() if isinstance(f, datasets.Image)] or [
            c for c in IMAGE_COLUMNS if c in columns]
    captions = [c for c in CAPTION_COLUMNS if c in columns]
    if not images:
        raise InputError(f"{name} has no image column (columns: {columns}); stream a dataset with an image column.")
    if not captions:
        raise InputError(f"{name} has no caption column (columns: {columns}); "
                         f"stream a dataset with one of: {', '.join(CAPTION_COLUMNS)}.")
    return images[0], (captions[0],)


def open_hub(name: str) -> dict[str, HubSource]:
    """{split: HubSource} for the train and validation splits of `name` streamed (a hub id or a local
    folder / data files `load_dataset` reads). Scripts never run: datasets 4+ no longer executes
    dataset scripts, and no trust_remote_code is passed."""
    try:
        found = datasets.load_dataset(name, streaming=True)
    except FileNotFoundError as e:
        raise MissingError(f"--data {name}: no such dataset ({printable(str(e))[:160]}); "
                           "pass a Hugging Face dataset id or a local folder of data files.") from None
    except (ValueError, OSError, ImportError, TypeError, datasets.exceptions.DatasetNotFoundError) as e:
        raise InputError(f"--data {name}: cannot stream it ({type(e).__name__}: {printable(str(e))[:160]}).") from None
    splits = {canonical_split(s) or s: split for s, split in found.items()} if isinstance(
        found, datasets.IterableDatasetDict) else {"train": found}
    if "train" not in splits:
        raise InputError(f"--data {name} has no train split (splits: {', '.join(found)}).")
    return {s: HubSource(splits[s], name) for s in ("train", "validation") if s in splits}


def open_shards(spec: str) -> dict[str, ShardSource]:
    """{split: ShardSource}: shards whose path names validation form the validation source; those
    named test are held out of training; all others train."""
    shards = expand_shards(spec)
    if not shards:
        raise MissingError(f"no .tar shards match {spec}; pass a shard, a folder of shards or a pattern.")
    base = Path(spec) if Path(spec).is_dir() else Path(spec).parent
    named = {s: _split_of(s, base) or "train" for s in shards}
    sources = {split: ShardSource([s for s in shards if named[s] == split]) for split in ("train", "validation")}
    if not len(sources["train"]):
        raise MissingError(f"{spec}: every shard is named validation or test; name training shards otherwise.")
    return {split: source for split, source in sources.items() if len(source)}


def open_source(spec: str) -> dict:
    """The sources of a streamed --data: shards when `spec` names .tar files, else a Hugging Face
    dataset in streaming mode."""
    return open_shards(spec) if is_webdataset(spec) else open_hub(spec)


def open_validation(spec: str) -> ShardSource | HubSource:
    """The --val-data source: all of its shards, or a dataset's validation split (else its train split)."""
    if is_webdataset(spec):
        shards = expand_shards(spec)
        if not shards:
            raise MissingError(f"--val-data: no .tar shards match {spec}; pass a shard, a folder of shards or a pattern.")
        return ShardSource(shards)
    splits = open_hub(spec)
    return splits.get("validation", splits["train"])


def is_streamed(spec: str, streaming: bool) -> bool:
    """Whether --data `spec` is read as a stream: webdataset shards always, anything else with --streaming."""
    return streaming or is_webdataset(str(spec))
