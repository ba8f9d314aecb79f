"""The one on-disk dataset format: a `datasets.DatasetDict` saved with `save_to_disk`."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets

from capalign.data import shapes
from capalign.data.prepared import open_prepared
from capalign.errors import UserError

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


def prepare_shapes(out: Path, *, limit: int = SHAPES_DEFAULT_LIMIT, seed: int = 0, image_size: int = 64) -> datasets.DatasetDict:
    """Generate the shapes dataset (deterministic from `seed`) and save it to `out`."""
    if limit < 4:
        raise UserError(f"--limit must be at least 4 for shapes (one image per split), got {limit}.")
    splits = {}
    for split, count in shapes.split_counts(limit).items():
        rows = list(shapes.generate_split(split, count, seed, image_size))
        splits[split] = datasets.Dataset.from_list(rows, features=SHAPES_FEATURES)
    dataset = datasets.DatasetDict(splits)
    save_atomically(dataset, out)
    return dataset


def save_atomically(dataset: datasets.DatasetDict, out: Path) -> None:
    """Write to a sibling temporary folder, then rename, so a crash never leaves half a dataset."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    dataset.save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def is_prepared(path: Path) -> bool:
    return (Path(path) / "dataset_dict.json").exists()


def load_prepared(data: str | Path | None = None) -> datasets.DatasetDict:
    """Load a prepared dataset folder, or a source name prepared on first use (`shapes`); a damaged
    folder is a UserError saying to re-run `capalign fetch` (see capalign.data.prepared)."""
    if data is None or str(data) == "shapes":
        path = DEFAULT_DATA_ROOT / "shapes"
        if not is_prepared(path):
            prepare_shapes(path)
        return open_prepared(path, "shapes")
    path = Path(data)
    if is_prepared(path):
        return open_prepared(path)
    if path.exists():
        raise UserError(f"{path} is not a prepared dataset (no dataset_dict.json); create one with `capalign fetch SOURCE --out {path}`.")
    prepared = DEFAULT_DATA_ROOT / str(data)
    if is_prepared(prepared):
        return open_prepared(prepared)
    raise UserError(f"No dataset at {path}; prepare it first with `capalign fetch {data}`.")


def get_split(dataset: datasets.DatasetDict, split: str) -> datasets.Dataset:
    """One split, or a clear error naming the ones that exist."""
    if split not in dataset:
        raise UserError(f"The dataset has no split '{split}'; it has: {', '.join(dataset)}.")
    return dataset[split]
