"""Image normalisation (decode, resize, re-encode: an import's CPU cost) in worker processes, for
`capalign fetch --processes N`, with the rows, their order and the skip report of one process.

Workers are spawned (never forked from a process holding threads and open files) and import Pillow,
numpy, capalign's light modules and, as spawn does, the main script (for the `capalign` command: its
CLI, typer and rich): no torch, no datasets. Payloads go out a bounded window
at a time, and results come back in source order. The reading ahead is invisible in the report:
skips recorded while an item was read are held with it and counted at its turn, and an error raised
while reading ahead is raised at its turn, so a `--limit` reached earlier ends the import as it would
in one process. Workers start with SIGINT blocked, so Ctrl-C reaches the main process alone, which
stops the pool (the CLI prints one line); a worker that dies is one InputError.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image

from capalign.data.images import BadImage, normalize_image
from capalign.errors import InputError

from .fetch_report import SkipLog
from .records import Candidate

WINDOW_PER_PROCESS = 8  # payloads in flight per worker: keeps every worker busy, memory flat
Normalized = bytes | tuple[str, str]  # JPEG bytes, or the (reason, detail) of a bad image
Payloads = Iterator[tuple[Candidate, bytes | Path]]


def normalize(payload: bytes | Path, size: int) -> Normalized:
    """normalize_image, with a bad image returned as its (reason, detail) rather than raised (a
    BadImage would not survive the trip back from a worker: its arguments are not its fields)."""
    try:
        return normalize_image(payload, size)
    except BadImage as exc:
        return exc.reason, exc.detail


def normalized_here(payloads: Payloads, size: int) -> Iterator[tuple[Candidate, Normalized]]:
    """One process: each payload normalised as it is read."""
    for cand, payload in payloads:
        yield cand, normalize(payload, size)


def _start_worker(max_pixels: int | None) -> None:
    Image.MAX_IMAGE_PIXELS = max_pixels  # the main process's decompression-bomb limit, changed or not


class ImagePool:
    """`processes` spawned workers; a context manager (leaving it stops and joins them)."""

    def __init__(self, processes: int) -> None:
        self.window = WINDOW_PER_PROCESS * processes
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(Image.MAX_IMAGE_PIXELS,))

    def __enter__(self) -> ImagePool:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, payload: bytes | Path, size: int) -> Future:
        # a worker is spawned inside submit: it inherits this thread's signal mask, so SIGINT blocked
        # here stays blocked in the worker for good (a Ctrl-C meanwhile is delivered on unblocking)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return self._pool.submit(normalize, payload, size)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _read_ahead(self, payloads: Payloads, size: int, log: SkipLog, ahead: deque) -> bool:
        """Read one payload and submit it; False once the payloads have ended (or raised)."""
        with log.held() as held:
            try:
                cand, payload = next(payloads)
            except StopIteration:
                ahead.append((held, None, None))
                return False
            except Exception as exc:  # raised at its turn, as one process would raise it
                ahead.append((held, None, exc))
                return False
            try:
                future = self._submit(payload, size)
            except BrokenProcessPool:  # a worker died and the pool noticed before this submit
                raise _worker_died(cand) from None
            ahead.append((held, cand, future))
            return True

    def normalized(self, payloads: Payloads, size: int, log: SkipLog) -> Iterator[tuple[Candidate, Normalized]]:
        """(candidate, normalised image) in payload order, as normalized_here gives them."""
        # Items read past a --limit are left to finish (a window at most), not cancelled: a future
        # cancelled here while the pool breaks is an error in the pool's own thread (Python 3.11).
        ahead: deque = deque()  # (held skips, candidate or None at the end, future or the error raised)
        reading = True
        while True:
            while reading and len(ahead) < self.window:
                reading = self._read_ahead(payloads, size, log, ahead)
            held, cand, outcome = ahead.popleft()
            log.replay(held)
            if cand is None:
                if outcome is not None:
                    raise outcome
                return
            try:
                result = outcome.result()
            except BrokenProcessPool:
                raise _worker_died(cand) from None
            yield cand, result


def _worker_died(cand: Candidate) -> InputError:
    return InputError(f"an image worker process ended abruptly (killed, or out of memory) while "
                      f"decoding {cand.ref}; re-run, with fewer --processes if memory is short.")


@contextmanager
def image_pool(processes: int) -> Iterator[ImagePool | None]:
    """An ImagePool for more than one process; None (normalise in this process) for one."""
    if processes <= 1:
        yield None
        return
    with ImagePool(processes) as pool:
        yield pool
