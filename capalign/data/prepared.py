"""Opening a prepared dataset folder that may be damaged or hostile, cheaply and up front.

`datasets.load_from_disk` memory-maps the Arrow files, so damage inside them would otherwise surface
later, at some row, as a traceback. Before anything is trained or scored this module checks, without
reading the data into memory: the folder's JSON files parse and name only files inside the folder,
every Arrow file's record batches parse and agree with the declared features, Arrow's offsets and
text are valid, each split holds the rows `fetch_report.json` recorded, images are stored as bytes
(a stored path would make datasets open any file or URL), and each split's first and last rows
decode. Anything wrong is one InputError saying to re-run `capalign fetch`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pyarrow as pa

from capalign.errors import InputError
from capalign.usertext import printable

MAX_JSON_BYTES = 2**20  # the folder's JSON files are a few kB; a larger one is not ours
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# what damaged JSON / Arrow / image bytes raise inside datasets, pyarrow and PIL
_DAMAGE = (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, pa.ArrowException)


class Damaged(Exception):
    """What is wrong with the folder, in a few words (turned into the InputError by `open_prepared`)."""


def _json(folder: Path, name: str, kind: type) -> object:
    """The JSON document `folder/name` (name may be `split/file.json`), of type `kind`."""
    path = folder / name
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise Damaged(f"{name} is {size} bytes, far larger than capalign writes")
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise Damaged(f"{name} is missing") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise Damaged(f"{name} is unreadable ({type(exc).__name__})") from None
    if not isinstance(doc, kind):
        raise Damaged(f"{name} does not hold a JSON {kind.__name__}")
    return doc


def _check_files(folder: Path) -> list[str]:
    """The split names, after checking every JSON file and that the Arrow files lie in the folder."""
    splits = _json(folder, "dataset_dict.json", dict).get("splits")
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, str) and _SPLIT_NAME.match(s) for s in splits):
        raise Damaged("dataset_dict.json does not list the split folders")
    for split in splits:
        if not (folder / split).is_dir():
            raise Damaged(f"split folder {split}/ is missing")
        _json(folder, f"{split}/dataset_info.json", dict)
        files = _json(folder, f"{split}/state.json", dict).get("_data_files")
        if not isinstance(files, list) or not files:
            raise Damaged(f"{split}/state.json lists no data files")
        for entry in files:
            name = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not _SPLIT_NAME.match(name) or not (folder / split / name).is_file():
                raise Damaged(f"{split}/state.json names a data file that is not in {split}/ ({printable(name)!r})")
    return splits


def _recorded_rows(folder: Path) -> dict:
    """Rows per split as fetch_report.json recorded them ({} when there is no readable report)."""
    try:
        rows = _json(folder, "fetch_report.json", dict).get("rows")
    except Damaged:
        return {}
    return rows if isinstance(rows, dict) else {}


def _check_split(name: str, split: datasets.Dataset, rows: dict) -> None:
    table = split.data.table
    if not pa.schema(split.features.type).equals(table.schema, check_metadata=False):
        raise Damaged(f"{name}/ data does not match its dataset_info.json features")
    table.validate(full=True)  # offsets and UTF-8 only; binary payloads are not read
    expected = rows.get(name)
    if isinstance(expected, int) and expected != len(split):
        raise Damaged(f"{name}/ holds {len(split)} rows, fetch_report.json recorded {expected}")
    if isinstance(split.features.get("image"), datasets.Image):
        for chunk in table.column("image").chunks:
            if chunk.field("path").null_count != len(chunk) or chunk.field("bytes").null_count:
                raise Damaged(f"{name}/ stores image paths instead of image bytes")
    for index in {0, len(split) - 1} if len(split) else ():
        split[index]


def open_prepared(folder: Path, source: str | None = None) -> datasets.DatasetDict:
    """Load and check the prepared dataset at `folder`; any damage is an InputError telling the user to
    re-run `capalign fetch SOURCE --out FOLDER` (SOURCE from fetch_report.json when it is readable)."""
    folder = Path(folder)
    try:
        splits = _check_files(folder)
        dataset = datasets.load_from_disk(str(folder))
        if not isinstance(dataset, datasets.DatasetDict) or sorted(dataset) != sorted(splits):
            raise Damaged("dataset_dict.json and the split folders disagree")
        rows = _recorded_rows(folder)
        for name, split in dataset.items():
            _check_split(name, split, rows)
    except Damaged as exc:
        raise _damaged(folder, source, str(exc)) from None
    except _DAMAGE as exc:
        raise _damaged(folder, source, _detail(exc)) from None
    return dataset


def _detail(exc: BaseException) -> str:
    """A library's exception as a few words on one line."""
    return f"{type(exc).__name__}: {printable(' '.join(str(exc).split())[:160])}"


def _damaged(folder: Path, source: str | None, detail: str) -> InputError:
    if source is None:
        try:
            recorded = _json(folder, "fetch_report.json", dict).get("source")
        except Damaged:
            recorded = None
        shown = "".join(ch for ch in printable(recorded) if ch.isprintable()) if isinstance(recorded, str) else ""
        source = shown.strip() or "SOURCE"
    return InputError(f"{folder} is a damaged prepared dataset ({detail}); "
                      f"re-run `capalign fetch {source} --out {folder}`.")


def open_saved(folder: Path) -> datasets.Dataset | datasets.DatasetDict:
    """A folder someone else wrote with `save_to_disk` (a DatasetDict or one Dataset), loaded lazily;
    unreadable JSON or Arrow files are an InputError naming the folder."""
    try:
        return datasets.load_from_disk(str(folder))
    except _DAMAGE as exc:
        raise InputError(f"{folder} is not a readable saved dataset ({_detail(exc)}); "
                         "save it again with `save_to_disk` or pass the right folder.") from None
