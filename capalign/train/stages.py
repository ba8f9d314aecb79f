"""Which stage (pretrain or align) a run folder belongs to, so that `--resume` never continues one
stage's interrupted run as the other's.

A finished run says it in `run.json`; a run in progress in `stage.json`, written when it starts and
removed when it finishes. Folders of older versions, interrupted before they recorded a stage, are
recognised by what they hold: the alignment's `rounds.json` or reward records in `metrics.jsonl`
(align), best-model folders or plain loss records (pretrain).
"""

from __future__ import annotations

import json
from pathlib import Path

from capalign.errors import InputError
from capalign.runs import RUN_INFO, atomic_write_json
from capalign.train.rounds import PROGRESS

STAGE = "stage.json"


def record_stage(run_dir: Path, kind: str) -> None:
    """Note at a run's start which stage trains into `run_dir`."""
    atomic_write_json(Path(run_dir) / STAGE, {"kind": kind})


def clear_stage(run_dir: Path) -> None:
    """Drop the note once run.json (which names the kind) is written."""
    (Path(run_dir) / STAGE).unlink(missing_ok=True)


def stage_of(run_dir: Path) -> str | None:
    """"pretrain" or "align" as the folder records or shows it; None when nothing tells."""
    run_dir = Path(run_dir)
    for name in (RUN_INFO, STAGE):
        recorded = _read(run_dir / name)
        if isinstance(recorded, dict) and recorded.get("kind") in ("pretrain", "align"):
            return recorded["kind"]
    if (run_dir / PROGRESS).is_file():
        return "align"
    if (run_dir / "best-loss").is_dir() or (run_dir / "best-metric").is_dir():
        return "pretrain"  # only pretraining keeps best models
    keys = _metric_keys(run_dir / "metrics.jsonl")
    if any(k.startswith(("rewards/", "logps/", "eval_")) for k in keys):
        return "align"
    if "loss" in keys:
        return "pretrain"
    return None


def check_resume(out: Path | None, kind: str) -> None:
    """Refuse `--resume` into a folder that another stage's run trained into."""
    if out is None or not Path(out).is_dir():
        return
    found = stage_of(Path(out))
    if found is not None and found != kind:
        raise InputError(f"{out} holds an interrupted {found} run, which `capalign {kind} --resume` cannot continue; "
                        f"continue it with `capalign {found} --resume --out {out}`, or choose another --out.")


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _metric_keys(path: Path) -> set[str]:
    keys: set[str] = set()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return keys
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            keys.update(record)
    return keys
