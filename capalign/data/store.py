"""The one on-disk dataset format: a `datasets.DatasetDict` saved with `save_to_disk`."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import datasets

from capalign.data import shapes
from capalign.data.prepared import open_prepared
from capalign.errors import ConfigError, InputError, MissingError
from capalign.outputs import claim_output_dir, install, write_errors

DEFAULT_DATA_ROOT = Path("data")
SHAPES_DEFAULT_LIMIT = 3000

SHAPES_FEATURES = datasets.Features(
    {
        "image_id": datasets.Value("string"),
        "image": datasets.Image(),
        "captions": datasets.List(datasets.Value("string")),
        "objects": datasets.List(
            {k: datasets.Value("string") for k in ("colour", "shape", "size", "position")}
        ),
    }
)


def prepare_shapes(out: Path, *, limit: int = SHAPES_DEFAULT_LIMIT, seed: int = 0, image_size: int = 64,
                   option: str | None = None) -> datasets.DatasetDict:
    """Generate the shapes dataset (deterministic from `seed`) and save it to `out` (which must pass
    the output rule, capalign.outputs; `option` is the flag that chose it, named in errors)."""
    if limit < 4:
        raise ConfigError(f"--limit must be at least 4 for shapes (one image per split), got {limit}.")
    out = claim_output_dir(out, "dataset", overwrite=True, option=option).path  # before minutes of work
    with write_errors(out, option=option):
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = Path(tempfile.mkdtemp(prefix=f".{out.name}.rows.", dir=out.parent))
        try:  # rows go to Arrow files in batches as they are drawn: memory does not grow with --limit
            splits = {}
            for split, count in shapes.split_counts(limit).items():
                splits[split] = datasets.Dataset.from_generator(
                    shapes.generate_split, features=SHAPES_FEATURES, cache_dir=str(rows),
                    fingerprint=f"shapes-{seed}-{split}-{count}-{image_size}",  # the same files for the same seed
                    gen_kwargs={"split": split, "count": count, "seed": seed, "image_size": image_size})
            save_atomically(datasets.DatasetDict(splits), out, option=option)
        finally:
            shutil.rmtree(rows, ignore_errors=True)
    return open_prepared(out)


def save_atomically(dataset: datasets.DatasetDict, out: Path, *, option: str | None = None) -> None:
    """Write to a hidden temporary folder beside `out`, then swap it in, so a crash never leaves half a
    dataset and an earlier prepared dataset there is replaced only once the new one is complete.
    `out` must pass the output rule (capalign.outputs): another folder there is refused."""
    out = claim_output_dir(out, "dataset", overwrite=True, option=option).path
    with write_errors(out, option=option):
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            dataset.save_to_disk(str(work / "prepared"))
            install(work / "prepared", out, "dataset")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def is_prepared(path: Path) -> bool:
    return (Path(path) / "dataset_dict.json").exists()


def load_prepared(data: str | Path | None = None) -> datasets.DatasetDict:
    """Load a prepared dataset folder, or a source name prepared on first use (`shapes`); a damaged
    folder is an InputError saying to re-run `capalign fetch` (see capalign.data.prepared)."""
    if data is None or str(data) == "shapes":
        path = DEFAULT_DATA_ROOT / "shapes"
        if not is_prepared(path):
            prepare_shapes(path)
        return open_prepared(path, "shapes")
    path = Path(data)
    if is_prepared(path):
        return open_prepared(path)
    if path.exists():
        raise InputError(f"{path} is not a prepared dataset (no dataset_dict.json); create one with `capalign fetch SOURCE --out {path}`.")
    prepared = DEFAULT_DATA_ROOT / str(data)
    if is_prepared(prepared):
        return open_prepared(prepared)
    raise MissingError(f"No dataset at {path}; prepare it first with `capalign fetch {data}`.")


def get_split(dataset: datasets.DatasetDict, split: str) -> datasets.Dataset:
    """One split, or a clear error naming the ones that exist."""
    if split not in dataset:
        raise MissingError(f"The dataset has no split '{split}'; it has: {', '.join(dataset)}.")
    return dataset[split]


class SplitImages(Mapping):
    """A split's images by image id, decoded when asked for (`many` decodes a batch), never all at
    once: CLIPScore and retrieval embed them a batch at a time, so memory holds a batch, not the split."""

    def __init__(self, dataset):
        self.dataset = dataset.select_columns(["image"])
        self.rows = {str(i): row for row, i in enumerate(dataset.select_columns(["image_id"])["image_id"])}

    def __getitem__(self, image_id: str):
        return self.dataset[self.rows[image_id]]["image"]

    def many(self, image_ids: list[str]) -> list:
        """The images of these ids, in order, decoded together."""
        return self.dataset[[self.rows[i] for i in image_ids]]["image"]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)
