"""From candidates to the prepared dataset: split plan, one image decode per row, save_to_disk.

Rows are produced by generators and written by `Dataset.from_generator` (Arrow, in batches), so
memory does not grow with the number of images. Images are normalised in this process or in worker
processes (`FetchOptions.processes`, see image_workers), with the same rows either way.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from datasets import Dataset, DatasetDict, Features, Image, List, Value
from datasets.exceptions import DatasetGenerationError

from capalign.errors import CapalignError
from capalign.outputs import claim_output_dir, install, write_errors

from .download import Downloader
from capalign.data.images import BadImage, resolve_inside
from .records import Candidate
from . import fetch_report as R
from .fetch_report import FetchReport, SkipLog, write_report
from .image_workers import ImagePool, image_pool, normalized_here
from .splits import SPLITS, carve, seeded_split, split_caps

FEATURES = Features({"image_id": Value("string"), "image": Image(), "captions": List(Value("string"))})
REPORT_NAME = "fetch_report.json"
SHARD_BYTES = 16 * 2**20  # target shard size on disk
MAX_MEMBER_BYTES = 256 * 2**20  # a tar member larger than this is not read into memory
Plan = dict[str, tuple[Iterable[Candidate], int | None]]


@dataclass(frozen=True)
class FetchOptions:
    """How an import runs, not what it writes (so not in the report's settings): `processes` that
    normalise images (1: this one), and whether URL downloads are kept once the dataset is installed."""

    processes: int = 1
    keep_downloads: bool = False


def plan_splits(cands: list[Candidate], seed: int, limit: int | None) -> Plan:
    """Use the candidates' own splits when they have them (limit = cap per split, a missing
    validation/test split is a seeded 5% carved from train); otherwise a seeded 90/5/5 split with
    the limit shared 90/5/5 across splits."""
    if any(c.split for c in cands):
        groups: dict[str, list[Candidate]] = {s: [] for s in SPLITS}
        for c in cands:
            groups[c.split or "train"].append(c)
        for i, s in enumerate(("validation", "test")):
            if not groups[s] and groups["train"]:
                groups["train"], groups[s] = carve(groups["train"], seed + i)
        return {s: (groups[s], limit) for s in SPLITS}
    groups = seeded_split(cands, seed)
    caps = split_caps(limit)
    return {s: (groups[s], caps[s]) for s in SPLITS}


def _locate(c: Candidate, shard: list) -> bytes | Path:
    """The candidate's image: a path, or its bytes (read by seek from a tar shard: `shard` holds the
    one open shard, [path, file], replaced when a candidate from another shard comes)."""
    if c.path is not None:
        return resolve_inside(c.root, c.path)
    if c.data is not None:
        return c.data
    if c.tar is not None:
        path, offset, size = c.tar
        if size > MAX_MEMBER_BYTES:
            raise BadImage(R.TOO_LARGE, f"{size} bytes")
        if shard[0] != path:
            if shard[1] is not None:
                shard[1].close()
            shard[:] = [path, open(path, "rb")]
        shard[1].seek(offset)
        return shard[1].read(size)
    raise BadImage("no_image_locator", c.ref)


def _payloads(cands: Iterable[Candidate], log: SkipLog, downloader: Downloader | None):
    if downloader is not None:
        yield from downloader.fetch(cands, log)
        return
    shard: list = [None, None]
    try:
        for c in cands:
            try:
                yield c, _locate(c, shard)
            except BadImage as e:
                log.skip(e.reason, c.ref, e.detail)
    finally:
        if shard[1] is not None:
            shard[1].close()


def iter_rows(cands: Iterable[Candidate], cap: int | None, image_size: int, log: SkipLog,
              counts: dict[str, int], downloader: Downloader | None = None,
              pool: ImagePool | None = None) -> Iterator[dict]:
    """Yield prepared rows (decoded once, normalised: here, or by `pool`'s workers) until `cap` good
    rows; bad ones are logged."""
    payloads = _payloads(cands, log, downloader)
    images = pool.normalized(payloads, image_size, log) if pool else normalized_here(payloads, image_size)
    try:
        while cap is None or counts["rows"] < cap:
            try:
                c, image = next(images)
            except StopIteration:
                return
            if isinstance(image, tuple):  # a bad image: (reason, detail)
                log.skip(image[0], c.ref, image[1])
                continue
            counts["rows"] += 1
            counts["captions"] += len(c.captions)
            yield {"image_id": c.image_id, "image": {"bytes": image, "path": None},
                   "captions": c.captions, **c.extra}
    finally:
        images.close()
        payloads.close()


def _build(gen: Callable[[], Iterator[dict]], features: Features, cache: Path, counts: dict) -> Dataset:
    try:
        return Dataset.from_generator(gen, features=features, cache_dir=str(cache),
                                      fingerprint=uuid.uuid4().hex)
    except DatasetGenerationError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, CapalignError):
            raise cause from None
        raise
    except ValueError:
        if counts["rows"] == 0:  # datasets cannot build a split from an empty generator
            return Dataset.from_dict({k: [] for k in features}, features=features)
        raise


def write_prepared(*, source: str, fmt: str, out: Path, gens: dict[str, Callable[[dict], Iterator[dict]]],
                   log: SkipLog, settings: dict, features: Features = FEATURES,
                   notes: list[str] | None = None, count_key: str = "captions") -> FetchReport:
    """Build every split from its generator, save_to_disk into `out` (replacing an earlier prepared
    dataset there, atomically), write out/fetch_report.json, and return the FetchReport. `out` must
    pass the output rule (capalign.outputs): a file or a folder holding anything else is refused."""
    target = claim_output_dir(out, "dataset", overwrite=True).path
    with write_errors(target, option="--out"):
        return _write(source, fmt, Path(out), target, gens, log, settings, features, notes, count_key)


def _write(source, fmt, out: Path, target: Path, gens, log, settings, features, notes, count_key) -> FetchReport:
    """write_prepared's work: `out` as the user gave it (for the report), `target` its real folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        built, rows, caps = {}, {}, {}
        for split, make in gens.items():
            counts = {"rows": 0, "captions": 0}
            built[split] = _build(lambda make=make, counts=counts: make(counts), features,
                                  work / "cache", counts)
            rows[split], caps[split] = counts["rows"], counts["captions"]
        staged = work / "prepared"
        # small shards keep save_to_disk's memory low; an empty split needs one explicit shard
        shards = {s: max(1, -(-d.data.nbytes // SHARD_BYTES)) for s, d in built.items()}
        DatasetDict(built).save_to_disk(str(staged), num_shards=shards)
        del built
        report = FetchReport(source=source, format=fmt, out=out, rows=rows,
                             captions=caps if count_key == "captions" else {},
                             skipped=dict(sorted(log.counts.items())), report_path=out / REPORT_NAME,
                             notes=list(notes or []))
        write_report(staged / REPORT_NAME, report, log, settings)
        install(staged, target, "dataset")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_candidates(*, source: str, fmt: str, out: Path, plan: Plan, log: SkipLog, image_size: int,
                   settings: dict, downloader: Downloader | None = None, options: FetchOptions = FetchOptions(),
                   features: Features = FEATURES, notes: list[str] | None = None) -> FetchReport:
    """Write a prepared dataset from a split plan of candidates (see plan_splits). The downloader's
    files are removed once the dataset is installed, unless options.keep_downloads; a fetch that
    fails or is interrupted keeps them, so a re-run resumes."""
    notes = list(notes or [])
    if downloader is not None:
        notes.append(f"downloads kept in {downloader.dir}" if options.keep_downloads else
                     f"downloads cached in {downloader.dir} while fetching (a re-run resumes), removed once complete")
    with image_pool(options.processes) as pool:
        gens = {s: (lambda counts, cands=cands, cap=cap:
                    iter_rows(cands, cap, image_size, log, counts, downloader, pool))
                for s, (cands, cap) in plan.items()}
        report = write_prepared(source=source, fmt=fmt, out=out, gens=gens, log=log, settings=settings,
                                features=features, notes=notes)
    if downloader is not None and not options.keep_downloads:
        downloader.remove()
    return report
