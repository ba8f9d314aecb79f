"""Streaming training input: (image, caption) samples read lazily from webdataset shards or a Hugging
Face dataset in streaming mode (capalign.data.stream_sources), without preparing them first.

- Shares: each (process, DataLoader worker) pair is one share; in every pass the shards, in a seeded
  order, go round-robin to the shares (with fewer shards than shares, every share reads all shards
  and keeps every n-th sample), so the shares partition the samples with no overlap.
- Shuffling: the seeded shard order of each pass, then a buffer of `shuffle_buffer` encoded samples
  per share; one caption of a sample's captions is drawn per pass (a batch never holds one image twice).
- Memory: the buffer, one shard's captions and the batches in flight; not the data.
- Length: none. Each share repeats pass after pass, so no process or worker runs dry before the
  others; training stops at --max-steps.
- Resume: deterministic skipping. Batch i of a process comes from worker i mod W (the DataLoader's
  in-order round robin over workers whose streams never end), so after k batches the resumed loader's
  worker w takes the part of worker (w + k) mod W and skips the samples of that worker's first
  |{i < k : i mod W = (w + k) mod W}| batches (read and decoded, not processed or trained on).
- Windows (DPO): `window(i, size)` holds samples i*size .. (i+1)*size - 1 of the whole stream (one
  share, seeded, repeating) in memory as a small split; every process builds the same window.
- Validation: a streamed source has no held-out split in memory: the first VALIDATION_IMAGES samples
  of --val-data, else of the shards named val/validation (or the dataset's validation split), are
  held in memory as a small fixed set; without either, the run has no validation metrics and says so.
- Bad samples (cut or unreadable shards, non-image members, samples without captions) are skipped,
  counted and named in a warning (the first few per share and pass), never fatal.
"""

from __future__ import annotations

import itertools
import random
from contextlib import contextmanager
from typing import Iterator

import datasets
from torch.utils.data import IterableDataset, get_worker_info

from capalign import reporting
from capalign.config import RunConfig, TrainConfig
from capalign.data.images import BadImage, decode_image, normalize_image
from capalign.data.importers.fetch_report import SkipLog
from capalign.data.stream_sources import is_streamed, open_source, open_validation
from capalign.distributed import process_state
from capalign.errors import CapalignError, ConfigError, InputError

STREAM_IMAGE_SIZE = 256  # images are decoded to fetch's default stored size, as a prepared dataset holds them
VALIDATION_IMAGES = 512
VOCAB_SAMPLES = 100_000  # a word tokenizer built from config learns its words from this many samples' captions
WARNED_SKIPS = 5  # bad samples named one by one per share and pass; the rest are counted

VALIDATION_FEATURES = datasets.Features({
    "image_id": datasets.Value("string"),
    "image": datasets.Image(),
    "captions": datasets.List(datasets.Value("string")),
})


class _Skips(SkipLog):
    """A SkipLog that also names its first few skips in a warning."""

    def skip(self, reason: str, record: str, detail: str = "") -> None:
        super().skip(reason, record, detail)
        total = sum(self.counts.values())
        if total <= WARNED_SKIPS:
            more = " (later skips in this pass are counted, not listed)" if total == WARNED_SKIPS else ""
            reporting.log.warning(f"warning: skipped a bad streamed sample {self.records[-1]['record']} "
                                  f"({reason}){more}")


class TrainingStream(IterableDataset):
    """(PIL image, caption) pairs of `source` (a ShardSource or HubSource), this process's and this
    DataLoader worker's share only, repeated pass after pass; with `references`, (PIL image, all its
    captions) instead (SCST's reward needs every reference). `rank`/`world`: the process's place in
    the launch."""

    def __init__(self, source, *, seed: int, buffer: int, rank: int = 0, world: int = 1, name: str = "",
                 references: bool = False):
        self.source, self.seed, self.buffer = source, seed, buffer
        self.rank, self.world, self.name, self.references = rank, world, name, references
        self._skip_batches, self._batch_size = 0, 1
        self._cursor: tuple[int, Iterator[tuple]] | None = None  # (samples read, the reading) for window()

    def resume_after(self, batches: int, batch_size: int) -> None:
        """Continue after `batches` batches of `batch_size` (this process's loader) were trained on."""
        self._skip_batches, self._batch_size = batches, batch_size

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # a fresh loader asks worker 0 first: after k batches, worker w plays the part of worker (w + k) mod W
        worker = (worker + self._skip_batches) % workers
        share, shares = self.rank * workers + worker, self.world * workers
        skip = len(range(worker, self._skip_batches, workers)) * self._batch_size
        for pass_ in itertools.count():
            produced = 0
            for _ref, image, caption in self.share_samples(share, shares, pass_):
                produced += 1
                if skip:
                    skip -= 1
                    continue
                yield image, caption
            if not produced:
                raise InputError(f"{self.name}: share {share + 1} of {shares} (process {self.rank}, loader worker "
                                 f"{worker}) holds no usable sample (see the warnings); check the shards, "
                                 "or pass more shards or fewer processes.")

    def share_samples(self, share: int, shares: int, pass_: int) -> Iterator[tuple]:
        """(ref, image, caption) of one share in one pass, shuffled; `share` of `shares` (0-based)."""
        order = list(range(len(self.source)))
        random.Random(f"{self.seed}-{pass_}").shuffle(order)  # a str seed hashes the same in every process
        if len(order) >= shares:
            mine, keep = order[share::shares], (lambda n: True)
        else:
            mine, keep = order, (lambda n: n % shares == share)
        rng = random.Random(f"{self.seed}-{pass_}-{share}")
        log = _Skips()
        raw = (c for i, c in enumerate(c for s in mine for c in self.source.read(s, log)) if keep(i))
        buffer: list = []
        for cand in raw:
            buffer.append(cand)
            if len(buffer) >= self.buffer:
                yield from self._decoded(buffer.pop(rng.randrange(len(buffer))), rng, log)
        rng.shuffle(buffer)
        for cand in buffer:
            yield from self._decoded(cand, rng, log)

    def window(self, index: int, size: int) -> datasets.Dataset:
        """Samples index*size .. (index+1)*size - 1 of the whole stream (every share's, in one seeded
        order; the same in every process) with all their captions, as a small in-memory split. Windows
        asked for in turn continue one reading of the stream; any other (a resumed round) reads it
        again from the start."""
        start = index * size
        if self._cursor is None or self._cursor[0] != start:
            self._cursor = (0, self._every_pass())
        position, samples = self._cursor
        rows = {"image_id": [], "image": [], "captions": []}
        for ref, image, captions in itertools.islice(samples, start - position, start - position + size):
            rows["image_id"].append(ref)
            rows["image"].append(image)
            rows["captions"].append(list(captions) if self.references else [captions])
        self._cursor = (start + size, samples)
        return datasets.Dataset.from_dict(rows, features=VALIDATION_FEATURES)

    def _every_pass(self) -> Iterator[tuple]:
        for pass_ in itertools.count():
            produced = False
            for ref, image, caption in self.share_samples(0, 1, pass_):
                produced = True
                yield ref, image, caption
            if not produced:
                raise InputError(f"{self.name} holds no usable sample (see the warnings); check the shards.")

    def _decoded(self, cand, rng: random.Random, log: SkipLog) -> Iterator[tuple]:
        caption = cand.captions[rng.randrange(len(cand.captions))]  # drawn either way: one rng sequence
        try:
            image = decode_image(cand.data, STREAM_IMAGE_SIZE)
        except BadImage as e:
            log.skip(e.reason, cand.ref, e.detail)
            return
        yield cand.ref, image, list(cand.captions) if self.references else caption

    def captions(self, limit: int = VOCAB_SAMPLES) -> Iterator[str]:
        """The captions of the first `limit` samples in shard order (for a tokenizer built from config)."""
        for captions in self.reference_sets(limit):
            yield from captions

    def reference_sets(self, limit: int) -> Iterator[list[str]]:
        """Each of the first `limit` samples' captions, in shard order (every share reads the same)."""
        log = SkipLog()
        samples = (c for s in range(len(self.source)) for c in self.source.read(s, log))
        for cand in itertools.islice(samples, limit):
            yield list(cand.captions)


@contextmanager
def worker_errors() -> Iterator[None]:
    """Within the block, a capalign error raised in a DataLoader worker (which torch re-raises with
    the worker's traceback as its message) becomes the one-line error it was."""
    try:
        yield
    except CapalignError as e:
        lines = str(e).splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught ") and ": " in lines[-1]:
            raise type(e)(lines[-1].split(": ", 1)[1]) from None
        raise


def held_in_memory(source, limit: int = VALIDATION_IMAGES) -> datasets.Dataset:
    """The first `limit` usable samples of `source` as a small in-memory split (image_id, image, captions)."""
    log, rows = _Skips(), {"image_id": [], "image": [], "captions": []}
    samples = (c for s in range(len(source)) for c in source.read(s, log))
    for cand in samples:
        if len(rows["image_id"]) >= limit:
            break
        try:
            image = normalize_image(cand.data, STREAM_IMAGE_SIZE)
        except BadImage as e:
            log.skip(e.reason, cand.ref, e.detail)
            continue
        rows["image_id"].append(cand.ref)
        rows["image"].append({"bytes": image, "path": None})
        rows["captions"].append(cand.captions)
    return datasets.Dataset.from_dict(rows, features=VALIDATION_FEATURES)


def is_stream(config: RunConfig) -> bool:
    """Whether the run's --data is read as a stream (see stream_sources.is_streamed)."""
    return is_streamed(str(config.data), config.train.streaming)


def open_stream(config: RunConfig, settings: TrainConfig | None = None, references: bool = False,
                windowed: bool = False) -> dict:
    """{"train": TrainingStream, "validation": in-memory split (when there is one)} for a streamed
    --data; a stream has no length, so --max-steps is required unless it is read by `windowed`
    (TrainingStream.window). `settings`: the engine settings the run trains with (default
    `config.train`; stage 2 passes `config.align_engine()`); `references`: the stream yields each
    image with all its captions."""
    t = settings or config.train
    if not t.max_steps and not windowed:
        raise ConfigError(f"--data {config.data} is streamed and has no length; pass --max-steps N "
                          "(the run's length in optimiser steps).")
    sources = open_source(str(config.data))
    validation = sources.get("validation")
    if t.val_data:
        validation = open_validation(t.val_data)
    state = process_state()
    data = {"train": TrainingStream(sources["train"], seed=t.seed, buffer=t.shuffle_buffer,
                                    rank=state.process_index, world=state.num_processes, name=str(config.data),
                                    references=references)}
    if validation is not None:
        data["validation"] = held_in_memory(validation)
        reporting.log.info(f"Validation: the first {len(data['validation'])} samples of "
                           f"{t.val_data or 'the validation shards / split'}, held in memory.")
    else:
        reporting.log.info("note: the streamed data has no validation shards or split, so this run has no "
                           "validation metrics; name validation shards *val* or pass --val-data.")
    return data
