"""Run folders: their file names, naming, latest-run lookup and atomic writes."""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from capalign.errors import UserError

RUNS_ROOT = Path("runs")
CONFIG_NAME = "capalign.yaml"  # the resolved RunConfig
RUN_INFO = "run.json"  # written last: its presence marks a finished run
MODEL_DESCRIPTION = "capalign_model.json"  # architecture, mapper and frozen parts of the model


def new_run_dir(kind: str, out: Path | None, *, resume: bool = False, overwrite: bool = False) -> Path:
    """The folder a run writes to (`--out`, or `runs/<kind>-<timestamp>`), locked for this process.

    A folder holding a finished run is never written over unless `overwrite` (then it is first marked
    unfinished); a folder another live process trains into is refused."""
    if out is None:
        out = RUNS_ROOT / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while out.exists():
            suffix += 1
            out = RUNS_ROOT / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    out = Path(out)
    if (out / RUN_INFO).is_file() and not overwrite:
        what = "resume it with --resume only if it was interrupted; " if resume else ""
        raise UserError(f"{out} holds a finished run; {what}choose a new --out, or pass --overwrite to replace it.")
    with write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate launch the main process holds it
            lock_run_dir(out)
            if overwrite:
                (out / RUN_INFO).unlink(missing_ok=True)
                if not resume:  # the replaced run's checkpoints must not be resumed into the new one
                    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return out


LOCK = ".capalign.lock"
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def lock_run_dir(run_dir: Path) -> None:
    """Mark `run_dir` as used by this process until it exits (a lock file with pid and host); a lock
    left by a process that is gone (killed, crashed) is taken over, a live one is refused."""
    lock = Path(run_dir) / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
            except (OSError, ValueError):
                owner = {}
            if owner.get("pid") == me["pid"]:
                return
            if owner.get("host") == me["host"] and _alive(owner.get("pid")):
                raise UserError(f"{run_dir} is in use by process {owner['pid']} (lock {lock}); wait for it or choose another --out.") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        atexit.register(lambda: _release(lock, me["pid"]))
        return


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _release(lock: Path, pid: int) -> None:
    try:
        if json.loads(lock.read_text()).get("pid") == pid:
            lock.unlink()
    except (OSError, ValueError):
        pass


@contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Disk full, permission denied or a read-only folder while writing `path` (or any file within a
    block that writes a run) become one-line user errors naming the file (safetensors reports disk full
    as its own error type, matched by message). Other errors pass through."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise
        raise UserError(f"cannot write {exc.filename or path}: {exc.strerror or exc}; {_remedy(exc.errno)}") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        code = errno.ENOSPC if "No space left" in str(exc) else errno.EIO
        raise UserError(f"cannot write {path}: {exc}; {_remedy(code)}") from None


def _remedy(code: int | None) -> str:
    return {errno.ENOSPC: "free disk space (or point --out elsewhere) and rerun with --resume",
            errno.EACCES: "check the folder's permissions or choose another --out",
            errno.EROFS: "the file system is read-only; choose another --out"}.get(code, "check the folder and rerun")


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
    with write_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
