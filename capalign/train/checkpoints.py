"""Resume checkpoints that survive crashes, power cuts and damaged files.

A checkpoint folder is written under a temporary name, every file and the folder are fsynced, and a
`manifest.json` with each file's size and SHA-256 is written last: it is the completeness marker.
Only then is the folder renamed into place (and the parent fsynced); older checkpoints are removed
after that, keeping the newest `keep`. On resume each checkpoint is verified against its manifest,
newest first; a damaged one is skipped with the reason, and none intact is an InputError.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import fields
from pathlib import Path

from accelerate.utils.other import TORCH_SAFE_GLOBALS

from capalign.errors import InputError
from capalign.models import guard

MANIFEST = "manifest.json"
PREFIX = "step-"
ENGINE_STATE = "engine_state.json"
RESUME_HINT = "start afresh without --resume (or with --overwrite)"
# What accelerate's own weights-only loading admits in its RNG-state pickle (numpy arrays, codecs.encode).
_ALLOWED_GLOBALS = frozenset(f"{g.__module__}.{g.__qualname__}" for g in TORCH_SAFE_GLOBALS)


def fsync_tree(folder: Path) -> None:
    """Flush every file below `folder`, then the folders themselves, to disk."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*sorted(p for p in Path(folder).rglob("*") if p.is_dir()), Path(folder)]:
        fsync_dir(path)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def seal(folder: Path) -> None:
    """Fsync the checkpoint's files and write its manifest (the completeness marker), fsynced too."""
    folder = Path(folder)
    fsync_tree(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(files, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)
    fsync_dir(folder)


def damage(folder: Path) -> str | None:
    """None when the checkpoint matches its manifest; else which file is wrong and how."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing (the checkpoint was not completed)"
    try:
        files = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"{manifest} is unreadable"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["bytes"] or _digest(path) != expected["sha256"]:
            return f"{path} is damaged (size or checksum differs from the manifest)"
    return None


def checkpoints_newest_first(root: Path) -> list[Path]:
    """Completed-looking checkpoint folders (`step-N`), newest first."""
    if not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def newest_intact(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and why each newer one was passed over. Raises an
    InputError naming the damaged file when checkpoints exist but none is intact."""
    passed_over = []
    candidates = checkpoints_newest_first(root)
    for folder in candidates:
        reason = damage(folder)
        if reason is None:
            return folder, passed_over
        passed_over.append(f"{folder.name}: {reason}")
    if candidates:
        raise InputError(f"no intact checkpoint to resume from: {passed_over[0].split(': ', 1)[1]}; "
                        "start afresh without --resume (or with --overwrite).")
    return None, passed_over


def prune(root: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints (and leftovers of interrupted writes)."""
    for folder in checkpoints_newest_first(root)[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
    for leftover in Path(root).glob("*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)


def restore(accelerator, folder: Path, state_cls):
    """Load a checkpoint into `accelerator` (weights, optimiser, scheduler, RNG) and return its engine
    state as a `state_cls`. A checkpoint whose files are damaged or hostile even though they match
    their manifest (pickles importing code, safetensors headers that lie, a garbage engine state) is
    an InputError naming the file; nothing of it is unpickled beyond plain tensors."""
    folder = Path(folder)
    action = "cannot resume from"
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            guard.safetensors_shapes(path, folder, RESUME_HINT, action)
        elif path.suffix in guard.PICKLE_SUFFIXES:
            guard.check_pickle(path, folder, RESUME_HINT, _ALLOWED_GLOBALS, action)
    with guard.loading(folder, RESUME_HINT, action, what="weights, optimiser, scheduler or RNG state"):
        accelerator.load_state(str(folder))
    with guard.loading(folder, RESUME_HINT, action, what=ENGINE_STATE):
        data = json.loads((folder / ENGINE_STATE).read_bytes().decode("utf-8"))
    names = {f.name for f in fields(state_cls)}
    if not isinstance(data, dict) or not set(data) <= names or \
            not all(v is None or type(v) in (int, float, bool) for v in data.values()):
        raise InputError(f"{action} {folder}: {ENGINE_STATE} is not an engine state; {RESUME_HINT}")
    return state_cls(**data)
