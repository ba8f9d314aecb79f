"""Where a multi-round alignment stands, kept in its run folder so that `align --resume` continues it.

After each round but the last, the policy's weights are written to `rounds/policy-round-N.safetensors`
(fsynced under a temporary name, then renamed), the round's engine checkpoints are dropped, and only
then does `rounds.json` (written atomically) record N rounds finished, the steps trained so far and
those weights. A crash at any point thus leaves either the previous record with its weights (the
round is redone from its start, deterministically) or the new one; engine checkpoints present always
belong to the round after the last one recorded.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from capalign.errors import InputError, MissingError
from capalign.runs import atomic_write_json, write_errors
from capalign.train.checkpoints import fsync_dir

PROGRESS = "rounds.json"
FOLDER = "rounds"


@dataclass
class RoundProgress:
    """Rounds finished, steps trained in them, and the policy weights they ended with (relative to
    the run folder; None before the first round ends)."""

    finished: int = 0
    steps: int = 0
    policy: str | None = None


def load_progress(run_dir: Path) -> RoundProgress:
    """The recorded progress (none recorded: nothing finished)."""
    path = Path(run_dir) / PROGRESS
    if not path.is_file():
        return RoundProgress()
    try:
        progress = RoundProgress(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        raise InputError(f"{path} is unreadable; start afresh without --resume (or with --overwrite).") from None
    if progress.policy is not None and not (Path(run_dir) / progress.policy).is_file():
        raise MissingError(f"{Path(run_dir) / progress.policy}, which {path} names, is missing; start afresh without --resume.")
    return progress


def save_policy(run_dir: Path, module: torch.nn.Module, round_number: int) -> str:
    """Write the policy's weights after round `round_number`; returns their path in the run folder."""
    folder = Path(run_dir) / FOLDER
    final = folder / f"policy-round-{round_number}.safetensors"
    partial = final.with_name(final.name + ".partial")
    with write_errors(partial):
        folder.mkdir(exist_ok=True)
        save_model(module, str(partial))
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, final)
        fsync_dir(folder)
    return str(final.relative_to(run_dir))


def record(run_dir: Path, progress: RoundProgress) -> None:
    """Record the progress, then drop earlier rounds' weights."""
    atomic_write_json(Path(run_dir) / PROGRESS, asdict(progress))
    for old in (Path(run_dir) / FOLDER).glob("policy-round-*"):
        if progress.policy is None or old.name != Path(progress.policy).name:
            old.unlink()


def restore_policy(run_dir: Path, module: torch.nn.Module, progress: RoundProgress) -> None:
    """Load the weights the last finished round ended with into `module` (built the same way)."""
    load_model(module, Path(run_dir) / progress.policy, device=str(next(module.parameters()).device))


def clear(run_dir: Path) -> None:
    """Forget the progress (a finished run, or one started afresh)."""
    (Path(run_dir) / PROGRESS).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / FOLDER, ignore_errors=True)
