"""Process-group helpers, and the reductions that give the same gradients on N processes as on one
process with the same global batch (the loss terms themselves live in capalign.losses).

With `split_batches`, each process sees 1/N of the global batch and DDP averages gradients. Two kinds
of terms then need care:

- token-averaged terms (captioning cross-entropy): the global mean is sum(all tokens) / count(all
  tokens), not the mean of per-process means when processes hold different token counts. Each process
  returns `N * local_sum / global_count`; DDP's average of those is the global mean.
- batch-coupled terms (InfoNCE, where every caption is a negative for every image): each process
  gathers all embeddings with an autograd-aware all_gather and computes the full-batch loss, identical
  on every process. The gather's backward sums the gradient over processes (N x each local slice's
  share), and DDP's average divides by N again: the gradient is exactly the single-process one.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from accelerate import PartialState
from torch.distributed.nn.functional import all_gather

from capalign.errors import CapalignError, OutputError


def process_state():
    """accelerate's process state with the same device choice as the Engine's Accelerator. (A bare
    `PartialState()` under torchrun on a CPU-only machine settles on one process, and the Accelerator
    created after it inherits that: pass cpu=True there too.)"""
    return PartialState(cpu=not torch.cuda.is_available() and not torch.backends.mps.is_available())


PATIENT_WAIT = timedelta(hours=24)  # how long the others wait for the main process's first turn
_patient_groups: dict[int, object] = {}  # the launch's process group -> its patient gloo group


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others (as accelerate's
    `main_process_first`), with the others waiting on a gloo group of PATIENT_WAIT: the launch's own
    process group times a barrier out after 10 (NCCL) or 30 (gloo) minutes, less than encoding a
    CC3M-sized feature cache takes."""
    state = process_state()
    if state.num_processes == 1:
        yield
        return
    key = id(dist.group.WORLD)
    if key not in _patient_groups:  # a collective: every process gets here at the same point
        _patient_groups[key] = dist.new_group(backend="gloo", timeout=PATIENT_WAIT)
    if not state.is_main_process:
        dist.barrier(group=_patient_groups[key])
    yield
    if state.is_main_process:
        dist.barrier(group=_patient_groups[key])


def world_size() -> int:
    """Processes in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All processes' rows, in rank order, with gradients flowing back to each local slice."""
    if world_size() == 1:
        return tensor
    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def global_count(count: torch.Tensor) -> torch.Tensor:
    """Sum of a (non-differentiable) count over processes."""
    if world_size() == 1:
        return count
    total = count.detach().clone().float()
    dist.all_reduce(total)
    return total


def agree(value):
    """The main process's `value` on every process of a launch (a broadcast from rank 0, through the
    launch's process group, started here when the caller is the first to need it); `value` as is
    when the launch has one process."""
    state = process_state()
    if state.num_processes == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def claim_together(claim, marker_of, folder):
    """`claim()` (which may raise a CapalignError) on the main process first, then on the others,
    which see what the main process made; then a check that every process sees the file
    `marker_of(result)` with the bytes the main process wrote there. Returns this process's result;
    on any process's error, every process raises the first one (so none waits for the others).

    On several machines a folder on one machine's local disk, or a relative path resolved against
    different working directories, names different folders: caught here, before any training."""
    state = process_state()
    main = state.is_main_process

    def attempt():
        try:
            return claim(), None
        except CapalignError as error:
            return None, error

    result, error = attempt() if main else (None, None)
    error = agree(error)
    if error is not None:
        raise error
    if not main:
        result, error = attempt()
    marker = marker_of(result) if error is None else None
    expected = agree(_read(marker) if main else None)
    views = [None] * state.num_processes
    seen = marker is not None and expected is not None and _read(marker) == expected
    dist.all_gather_object(views, (error, seen, socket.gethostname()))
    errors = [error for error, _, _ in views if error is not None]
    if errors:
        raise errors[0]
    blind = [(rank, host) for rank, (_, seen, host) in enumerate(views) if not seen]
    if blind:
        rank, host = blind[0]
        raise OutputError(f"{folder}: process {rank} (on host {host}) does not see the run folder the main process "
                          f"(on host {views[0][2]}) writes; pass --out as an absolute path on storage every machine "
                          "mounts at the same place (e.g. --out /shared/runs/NAME).")
    return result


def _read(path: Path | None) -> bytes | None:
    """The file's bytes, or None when it cannot be read."""
    try:
        return Path(path).read_bytes() if path is not None else None
    except OSError:
        return None
