"""Run folders: their file names, naming, latest-run lookup and atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from capalign.errors import UserError

RUNS_ROOT = Path("runs")
CONFIG_NAME = "capalign.yaml"  # the resolved RunConfig
RUN_INFO = "run.json"  # written last: its presence marks a finished run
MODEL_DESCRIPTION = "capalign_model.json"  # architecture, mapper and frozen parts of the model


def new_run_dir(kind: str, out: Path | None) -> Path:
    """The folder a new run writes to: `--out`, or `runs/<kind>-<timestamp>`."""
    if out is None:
        out = RUNS_ROOT / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while out.exists():
            suffix += 1
            out = RUNS_ROOT / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def is_run_dir(path: Path) -> bool:
    """A finished run folder holds a run.json and a model config (prefix / contrastive runs:
    capalign_model.json beside their vision/ and decoder/ folders)."""
    path = Path(path)
    return (path / RUN_INFO).is_file() and ((path / "config.json").is_file() or (path / MODEL_DESCRIPTION).is_file())


def mark_finished(run_dir: Path, kind: str, **info) -> None:
    """Write run.json (kind, finish time, `info`): the run folder now holds a finished run."""
    atomic_write_text(Path(run_dir) / RUN_INFO, json.dumps({"kind": kind, "finished": time.time(), **info}, indent=2))


def run_kind(run_dir: Path) -> str:
    """"pretrain" or "align", as run.json records it."""
    return json.loads((Path(run_dir) / RUN_INFO).read_text()).get("kind", "?")


def latest_run(kind: str | None = None) -> Path | None:
    """The most recently finished run (of `kind`, if given) under runs/."""
    if not RUNS_ROOT.is_dir():
        return None
    finished = [p for p in RUNS_ROOT.iterdir() if is_run_dir(p) and (kind is None or run_kind(p) == kind)]
    return max(finished, key=lambda p: json.loads((p / RUN_INFO).read_text())["finished"], default=None)


def resolve_model(model: str | Path | None, kind: str | None = None) -> Path:
    """`--model` as given, or the latest finished run; a clear error when there is none."""
    if model is None:
        found = latest_run(kind)
        if found is None:
            what = f"{kind} run" if kind else "trained model"
            raise UserError(f"No {what} found under {RUNS_ROOT}/; train one with `capalign pretrain` or pass --model DIR.")
        return found
    path = Path(model)
    if not path.exists():
        raise UserError(f"Model folder {path} does not exist.")
    if not is_run_dir(path):
        raise UserError(f"{path} is not a finished capalign run folder (no run.json/config.json).")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename over the target."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, payload) -> None:
    """JSON (numpy scalars and sets allowed) written atomically; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=1, default=_json_default))


def _json_default(value):
    if getattr(value, "ndim", None) == 0:  # numpy scalars
        return value.item()
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
