"""Stopping training as Ctrl-C does, at a chosen step (the interruption and resume tests share it)."""

from __future__ import annotations

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
