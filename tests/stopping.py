"""Stopping as Ctrl-C does: training at a chosen step in-process, and a child process that a test sends a real SIGINT
(the interruption and resume tests share both)."""

from __future__ import annotations

import signal
from typing import Callable

from capalign.train.engine import Engine


def interrupt_at_step(monkeypatch, step: int) -> Callable[[], None]:
    """From now on the engine raises KeyboardInterrupt when it is about to train step `step` + 1, as
    a Ctrl-C there would; returns what undoes it (the resumed run then trains normally)."""
    original = Engine._train_batch

    def interrupt(self, batch, window):
        if self.state.step == step:
            raise KeyboardInterrupt
        return original(self, batch, window)

    monkeypatch.setattr(Engine, "_train_batch", interrupt)
    return lambda: monkeypatch.setattr(Engine, "_train_batch", original)


def sigint_as_at_a_terminal() -> None:
    """`preexec_fn` for a child that a test interrupts with SIGINT: the default disposition, as under a terminal.
    A shell without job control starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
