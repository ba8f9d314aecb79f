"""Run folders: their file names, naming, claiming and locking, latest-run lookup and atomic writes."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, TextIO

from capalign.errors import InputError, MissingError, OutputError
from capalign.models import registry
from capalign.outputs import HELD_RUNS, LOCK, LOCK_GUARD, as_given, claim_output_dir, commit, resolved, write_errors
from capalign.reporting import log

RUNS_ROOT = Path("runs")
CONFIG_NAME = "capalign.yaml"  # the resolved RunConfig
RUN_INFO = "run.json"  # written last: its presence marks a finished run
MODEL_DESCRIPTION = registry.MODEL_DESCRIPTION  # architecture, mapper and frozen parts of the model
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def new_run_dir(kind: str, out: Path | None, *, resume: bool = False, overwrite: bool = False) -> Path:
    """The folder a run writes to (`--out`, or `runs/<kind>-<timestamp>`, named by the main process of
    a torchrun / accelerate launch for all of them), claimed by the output rule (capalign.outputs) and
    locked for this process.

    A folder holding a finished run is never written over unless `overwrite`; then the new run is
    written into a staging folder of the same name (returned) and replaces the old one only in
    `finish_run`, so an interrupted overwrite leaves the old run intact. A folder another live
    process trains into is refused."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun / accelerate launch
    if out is None:
        out = RUNS_ROOT / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while out.exists():
            suffix += 1
            out = RUNS_ROOT / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
        if launched:  # every process writes where the main one decided, as an absolute path: the
            # other machines' working directories need not be the main one's
            from capalign.distributed import agree  # deferred: imports torch and accelerate, for launches only

            out = Path(agree(str(out.absolute())))
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch the main process holds it
    if launched:  # the main process claims first, then the others; each must see the folder it locked
        from capalign.distributed import claim_together  # deferred: imports torch and accelerate, for launches only

        run_dir, claimed = claim_together(lambda: _claim_run_dir(out, resume, overwrite, main),
                                          lambda claimed: claimed[1].path / LOCK, out)
    else:
        run_dir, claimed = _claim_run_dir(out, resume, overwrite, main)
    if claimed.holds_result and main:
        log.info(f"Writing the new run to {as_given(run_dir, out)}; it replaces {out} once it has finished.")
    return as_given(run_dir, out)


def _claim_run_dir(out: Path, resume: bool, overwrite: bool, main: bool):
    """new_run_dir's claim of `out` by this process: (the folder to write to, the claim)."""
    if resume and not Path(out).is_dir():
        raise MissingError(f"--resume: {out} does not exist; point --out at the interrupted run folder, or drop --resume to start a new run.")
    what = "resume it with --resume only if it was interrupted; " if resume else ""
    claim = claim_output_dir(out, "run", overwrite=overwrite, option="--out", hint=what)
    with write_errors(claim.path, option="--out"):
        claim.path.mkdir(parents=True, exist_ok=True)
        if main:
            lock_run_dir(claim.path)
        run_dir = claim.write_dir(keep=resume, create=main)
        HELD_RUNS.add(run_dir)
        if main and overwrite and not resume:  # the replaced run's checkpoints must not be resumed into the new one
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return run_dir, claim


def finish_run(run_dir: Path) -> Path:
    """Call once a run is completely written (after mark_finished and the model card): a run staged
    by an --overwrite now replaces the old one. Returns the run's final folder."""
    with write_errors(run_dir, option="--out"):
        return as_given(resolved(commit(run_dir)), run_dir)


def lock_run_dir(run_dir: Path) -> None:
    """Mark `run_dir` as used by this process until it exits (an owner record with pid and host).

    The check and the take-over happen under a filelock (flock) on LOCK_GUARD, so racing processes
    decide one at a time: exactly one takes a stale record (its process is gone). A live record is
    refused; a record written on another host is never taken over (its process cannot be checked
    from here), the message says how to remove it."""
    from filelock import FileLock, Timeout  # deferred: only runs that train take the lock

    run_dir = Path(run_dir)
    lock = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        with FileLock(str(run_dir / LOCK_GUARD), timeout=60):
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            holder = holder if isinstance(holder, dict) else {}
            if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                return
            if holder.get("host") not in (None, me["host"]):
                raise OutputError(f"{run_dir} is in use by process {holder.get('pid')} on host {holder['host']} "
                                  f"(lock {lock}); if you are sure that process has ended, delete {lock} and rerun.")
            if _alive(holder.get("pid")):
                raise OutputError(f"{run_dir} is in use by process {holder['pid']} (lock {lock}); "
                                  "wait for it or choose another --out.")
            atomic_write_text(lock, json.dumps(me))  # a record left by a process that is gone is replaced
    except Timeout:
        raise OutputError(f"{run_dir} is being claimed by another process ({run_dir / LOCK_GUARD}); "
                          "wait for it or choose another --out.") from None
    atexit.register(_release, run_dir, me["pid"])


def _alive(pid) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def _release(run_dir: Path, pid: int) -> None:
    lock = run_dir / LOCK
    try:
        if json.loads(lock.read_text()).get("pid") == pid:
            lock.unlink()
    except (OSError, ValueError, AttributeError):
        pass


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


def looks_like_hub_id(model: str | Path) -> bool:
    """Whether a `--model` that is no local path reads as a Hugging Face model id (`owner/name`,
    whose owner is not a local folder: `runs/typo` stays a missing folder)."""
    text = str(model)
    return bool(HUB_ID.fullmatch(text)) and not Path(text.split("/")[0]).exists()


def resolve_model(model: str | Path | None, kind: str | None = None) -> Path:
    """`--model` as given, or the latest finished run; a clear error when there is none. A model is a
    finished capalign run folder, a transformers captioner folder (as save_pretrained writes it; the
    registry names the architectures), or a Hub id of either (through capalign.hub: the cache when
    offline, one line saying what to fetch when it is not there)."""
    if model is None:
        found = latest_run(kind)
        if found is None:
            what = f"{kind} run" if kind else "trained model"
            raise MissingError(f"No {what} found under {RUNS_ROOT}/; train one with `capalign pretrain` or pass --model DIR.")
        return found
    path = Path(model)
    if not path.exists():
        if not looks_like_hub_id(model):
            raise MissingError(f"Model folder {path} does not exist.")
        from capalign.hub import fetch_model  # deferred: imports huggingface_hub and datasets, only for hub ids

        path = fetch_model(str(model))
    if any((path / name).is_file() for name in (RUN_INFO, CONFIG_NAME, MODEL_DESCRIPTION)):
        if not is_run_dir(path):  # a capalign run, interrupted or damaged
            raise InputError(f"{path} is not a finished capalign run folder (no run.json/config.json).")
        return path
    if registry.folder_architecture(path) is None:
        raise InputError(registry.not_a_captioner(path) + ".")
    return path


def atomic_write_text(path: Path, text: str, *, option: str | None = None) -> None:
    """Write via a temporary file in the same folder and rename over the target (`option`: the flag
    that chose `path`, named if the write fails)."""
    _atomic_write(path, lambda handle: handle.write(text), option)


def atomic_write_json(path: Path, payload, *, option: str | None = None) -> None:
    """JSON (numpy scalars and sets allowed) written atomically, encoded piece by piece into the file
    (a large evaluation is never held a second time as one string); parent folders are created."""
    path = Path(path)
    with write_errors(path, option=option):
        path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda handle: json.dump(payload, handle, indent=1, default=_json_default), option)


def _atomic_write(path: Path, write: Callable[[TextIO], object], option: str | None) -> None:
    path = Path(path)
    with write_errors(path, option=option):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        try:
            with os.fdopen(fd, "w") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _json_default(value):
    if getattr(value, "ndim", None) == 0:  # numpy scalars
        return value.item()
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
