"""Where capalign may write (the rule every command's output folder goes through), how a finished
result is replaced, and write failures as one line.

The rule: capalign writes only into a new folder, an empty one, or one it marked as its own (a
MARKER file; a run or prepared dataset written before markers existed counts too). A folder holding
anything else is refused, even with --overwrite. Replacing a finished result (--overwrite, or
`fetch` into its own earlier dataset) writes the new one beside it and swaps it in only once it is
complete, so an interrupted replacement leaves the old result usable.
"""

from __future__ import annotations

import errno
import json
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from capalign.errors import OutputError

MARKER = ".capalign-owner"  # {"kind": ...}: capalign created or claimed this folder
LOCK = ".capalign.lock"  # a run folder's owner record: {"pid", "host"}
LOCK_GUARD = ".capalign.lock.guard"  # flock'd by filelock while the owner record is checked or changed
OWN_FILES = {MARKER, LOCK, LOCK_GUARD}  # a folder holding only these is as good as empty
STAGING = ".capalign-new"  # `.<name>.capalign-new/<name>`: a replacement being written
NOUNS = {"run": "run", "dataset": "prepared dataset", "report": "report"}
# Written by capalign versions before the marker: they count as capalign's own.
LEGACY = {"run": ("run.json", "capalign.yaml"), "dataset": ("dataset_dict.json",), "report": ()}
FINISHED = {"run": ("run.json",), "dataset": ("dataset_dict.json",), "report": ("index.html", "scores.json")}
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
HELD_RUNS: set[Path] = set()  # run folders this process trains into (their write errors suggest --resume)


def resolved(path: str | Path) -> Path:
    """`path` with `~`, `..` and symlinks resolved: every decision is made about the real folder."""
    return Path(path).expanduser().resolve()


def as_given(real: Path, given: str | Path) -> Path:
    """`real` (a resolved path) relative to the current folder when `given` was relative and `real`
    lies below it, so messages and return values read like what the user typed."""
    try:
        return real.relative_to(Path.cwd().resolve()) if not Path(given).is_absolute() else real
    except ValueError:
        return real


def _choose(option: str | None) -> str:
    return f"choose a new {option}" if option else "move it away or write elsewhere"


def owner(folder: Path) -> str | None:
    """The kind of output capalign wrote into `folder` ("run", "dataset", "report"), or None."""
    try:
        kind = json.loads((folder / MARKER).read_text()).get("kind")
        if kind in NOUNS:
            return kind
    except (OSError, ValueError, AttributeError):
        pass
    return next((kind for kind, names in LEGACY.items() if any((folder / n).is_file() for n in names)), None)


def mark(folder: Path, kind: str) -> None:
    """Record that capalign owns `folder` (holding a `kind` output)."""
    (Path(folder) / MARKER).write_text(json.dumps({"kind": kind}))


@dataclass
class Claim:
    """An output folder capalign may write: `path` (resolved); `holds_result` when a finished result
    is there and is to be replaced (then write into `write_dir()` and `commit` it)."""

    path: Path
    kind: str
    holds_result: bool

    def staging(self) -> Path:
        """The folder a replacement is written into: same name, inside a hidden sibling."""
        return self.path.parent / f".{self.path.name}{STAGING}" / self.path.name

    def write_dir(self, *, keep: bool = False, create: bool = True) -> Path:
        """Where to write now: the folder itself (created and marked), or, when it holds a finished
        result, a fresh staging folder (an earlier unfinished one is kept with `keep`). Without
        `create` (a non-main process of a distributed run) the folder is only made to exist."""
        target = self.staging() if self.holds_result else self.path
        if create and self.holds_result and not keep:
            shutil.rmtree(target.parent, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        if create:
            mark(target, self.kind)
        return target


def claim_output_dir(path: str | Path, kind: str, *, overwrite: bool = False, option: str | None = "--out",
                     hint: str = "") -> Claim:
    """Check that capalign may write a `kind` output ("run", "dataset", "report") at `path`; creates
    nothing. Refused with one line: a file (or a path below one), a folder holding files capalign did
    not write (even with `overwrite`), another kind of capalign output, and a finished result unless
    `overwrite` (`hint` is put before the remedy). `option` is the flag named in messages."""
    try:
        target = resolved(path)
    except (RuntimeError, OSError) as exc:  # a symlink loop
        raise OutputError(f"cannot follow {path}: {exc}; {_choose(option)}.") from None
    shown = Path(path) if Path(path).absolute() == target else f"{path} (that is {target})"
    existing = next(p for p in (target, *target.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "" if existing == target else f" (so {shown} cannot be a folder)"
        raise OutputError(f"{existing} is a file, not a folder{where}; {_choose(option)}.")
    if existing != target:
        return Claim(target, kind, holds_result=False)
    try:
        names = {p.name for p in target.iterdir()}
    except PermissionError:
        raise OutputError(f"cannot read {shown}: permission denied; {_choose(option)}.") from None
    found = owner(target)
    if found is None:
        if names - OWN_FILES:
            raise OutputError(f"{shown} exists and is not a {NOUNS[kind]} (it holds files capalign did not write); "
                              f"{_choose(option)} (capalign never writes into such a folder, not even with --overwrite).")
        return Claim(target, kind, holds_result=False)
    if found != kind:
        raise OutputError(f"{shown} holds a capalign {NOUNS[found]}, not a {NOUNS[kind]}; {_choose(option)}.")
    finished = any((target / n).exists() for n in FINISHED[kind])
    if finished and not overwrite:
        raise OutputError(f"{shown} holds a finished {NOUNS[kind]}; {hint}{_choose(option)}, "
                          "or pass --overwrite to replace it.")
    return Claim(target, kind, holds_result=finished)


def install(staged: Path, target: Path, kind: str) -> Path:
    """Mark `staged` (a complete output) as capalign's and put it at `target`; whatever was there is
    removed only after the new folder is in place."""
    mark(staged, kind)
    target = Path(target)
    if target.exists():
        old = staged.parent / f".previous-{uuid.uuid4().hex}"
        target.rename(old)
        staged.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(target)
    return target


def commit(written: Path) -> Path:
    """Finish a write: a staging folder (Claim.write_dir) replaces the folder it was staged for and
    its hidden parent is removed; any other folder is returned as is."""
    written = Path(written)
    container = written.parent
    if container.name != f".{written.name}{STAGING}":
        return written
    target = install(written, container.parent / written.name, owner(written) or "run")
    shutil.rmtree(container, ignore_errors=True)
    return target


@contextmanager
def write_errors(path: Path, *, option: str | None = None) -> Iterator[None]:
    """Disk full, permission denied or a read-only folder while writing `path` (or any file within the
    block) become one-line user errors naming the file and what to do (`option`: the flag that picks
    the destination, named in the remedy; inside a run folder this process trains into, --out and
    --resume). safetensors reports disk full as its own error type, matched by message."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise
        failed = exc.filename or path
        raise OutputError(f"cannot write {failed}: {exc.strerror or exc}; {_remedy(exc.errno, failed, option)}") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        code = errno.ENOSPC if "No space left" in str(exc) else errno.EIO
        raise OutputError(f"cannot write {path}: {exc}; {_remedy(code, path, option)}") from None


def _remedy(code: int | None, path, option: str | None) -> str:
    """What to do, naming only options the command has: a training run's --out and --resume, else
    `option` when given, else none."""
    here = resolved(path)
    in_run = any(run == here or run in here.parents for run in HELD_RUNS)
    elsewhere = "another --out" if in_run else f"another {option}" if option else "another folder"
    rerun = "rerun with --resume" if in_run else "rerun"
    return {errno.ENOSPC: f"free disk space (or choose {elsewhere}) and {rerun}",
            errno.EDQUOT: f"free disk space (or choose {elsewhere}) and {rerun}",
            errno.EACCES: f"check the folder's permissions or choose {elsewhere}",
            errno.EPERM: f"check the folder's permissions or choose {elsewhere}",
            errno.EROFS: f"the file system is read-only; choose {elsewhere}"}.get(code, "check the folder and rerun")
