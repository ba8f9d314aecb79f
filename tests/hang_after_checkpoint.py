"""`python -m hang_after_checkpoint ARGS`: `capalign ARGS`, except that the process stops responding
once it has saved its first checkpoint, as a machine that hangs there would. A test that kills a run
mid-way then finds it mid-way every time, however slow the machine (a run left alone can finish
before a poll sees its checkpoint)."""

import threading

from capalign.cli import main
from capalign.train.engine import Engine

_save_checkpoint = Engine.save_checkpoint


def _save_then_hang(self):
    final = _save_checkpoint(self)
    threading.Event().wait()  # until the test kills the process
    return final


Engine.save_checkpoint = _save_then_hang
main()
