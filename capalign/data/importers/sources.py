"""Hub names, Hugging Face dataset ids and saved DatasetDicts, through one conversion path."""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict

from capalign.errors import InputError, OutputError

from . import cifar_pairs, ultrafeedback
from .download import Downloader
from .hf_source import HUB_SPECS, HubSpec, hf_candidates, resolve_columns, split_indices
from capalign.data.prepared import open_saved
from capalign.hub import load_hub_dataset
from .pipeline import FetchOptions, run_candidates, write_prepared
from .fetch_report import FetchReport, SkipLog


def convert_hf(ds: DatasetDict, spec: HubSpec, *, source: str, fmt: str, out: Path, log: SkipLog, seed: int,
               limit: int | None, image_size: int, settings: dict,
               options: FetchOptions = FetchOptions()) -> FetchReport:
    """Write a prepared dataset from a loaded DatasetDict described by `spec` (limit per split)."""
    spec = resolve_columns(ds, spec, source)
    parts = split_indices(ds, seed, source)
    plan = {s: (hf_candidates(ds, spec, p, log), limit) for s, p in parts.items()}
    dl = Downloader(out.parent / f"{out.name}.downloads") if spec.url else None
    return run_candidates(source=source, fmt=fmt, out=out, plan=plan, log=log, image_size=image_size,
                          settings=settings, downloader=dl, options=options,
                          notes=[spec.note] if spec.note else [])


def _as_dict(ds, name: str) -> DatasetDict:
    if isinstance(ds, DatasetDict):
        return ds
    raise InputError(f"{name} did not load as a dataset with splits; pass a dataset id or a saved DatasetDict.")


def convert_named(key: str, ds: DatasetDict, *, out: Path, log: SkipLog, seed: int, limit: int | None,
                  image_size: int, settings: dict, options: FetchOptions = FetchOptions()) -> FetchReport:
    """Convert an already loaded hub dataset for hub name `key` (used offline by the tests too);
    the CIFAR-100 pairs and UltraFeedback are made in this process whatever options.processes."""
    if key == "cifar100-pairs":
        gens = cifar_pairs.pair_generators(ds, seed, limit, image_size, log)
        return write_prepared(source=key, fmt="cifar100-pairs", out=out, gens=gens, log=log,
                              settings=settings, features=cifar_pairs.PAIR_FEATURES,
                              notes=["two CIFAR-100 images side by side; objects = [left, right]"])
    if key == "ultrafeedback":
        gens = ultrafeedback.preference_generators(ds, seed, limit, log)
        return write_prepared(source=key, fmt="preference-pairs", out=out, gens=gens, log=log,
                              settings=settings, features=ultrafeedback.PAIR_FEATURES, count_key="pairs",
                              notes=["preference pairs for `capalign align`, not image rows"])
    return convert_hf(ds, HUB_SPECS[key], source=key, fmt=key, out=out, log=log, seed=seed, limit=limit,
                      image_size=image_size, settings=settings, options=options)


def import_hub_name(key: str, *, out: Path, log: SkipLog, seed: int, limit: int | None, image_size: int,
                    settings: dict, options: FetchOptions = FetchOptions()) -> FetchReport:
    """Fetch one of the named sources (fails fast offline when it is not cached); their columns are known."""
    repo, config = {"cifar100-pairs": (cifar_pairs.REPO, None),
                    "ultrafeedback": (ultrafeedback.REPO, None)}.get(
        key, (HUB_SPECS.get(key, HubSpec("")).repo, HUB_SPECS.get(key, HubSpec("")).config))
    ds = _as_dict(load_hub_dataset(repo, config, key), repo)
    return convert_named(key, ds, out=out, log=log, seed=seed, limit=limit, image_size=image_size,
                         settings=settings, options=options)


def import_hf_id(repo: str, *, out: Path, log: SkipLog, seed: int, limit: int | None, image_size: int,
                 settings: dict, image_column: str | None, caption_column: str | None,
                 options: FetchOptions = FetchOptions()) -> FetchReport:
    """Any Hugging Face dataset id, with --image-column / --caption-column (auto-detected if not given)."""
    ds = _as_dict(load_hub_dataset(repo, None, repo), repo)
    spec = HubSpec(repo, image=image_column, captions=(caption_column,) if caption_column else ())
    return convert_hf(ds, spec, source=repo, fmt="huggingface", out=out, log=log, seed=seed, limit=limit,
                      image_size=image_size, settings=settings, options=options)


def import_saved(path: Path, *, out: Path, log: SkipLog, seed: int, limit: int | None, image_size: int,
                 settings: dict, image_column: str | None, caption_column: str | None,
                 options: FetchOptions = FetchOptions()) -> FetchReport:
    """A folder written by `save_to_disk` (e.g. a hub dataset copied from a connected machine)."""
    if Path(out).resolve() == path.resolve():
        raise OutputError(f"--out {out} is the source folder itself; choose another --out.")
    ds = open_saved(path)
    if not isinstance(ds, DatasetDict):
        ds = DatasetDict({"train": ds})
    first = next(iter(ds.values()))
    spec = HubSpec(str(path), image=image_column, captions=(caption_column,) if caption_column else (),
                   id_column="image_id" if "image_id" in first.column_names else None)
    return convert_hf(ds, spec, source=str(path), fmt="saved-dataset", out=out, log=log, seed=seed,
                      limit=limit, image_size=image_size, settings=settings, options=options)
