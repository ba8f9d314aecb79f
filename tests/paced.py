"""`python -m paced ARGS`: `capalign ARGS` on a machine that stalls once the work has begun, so that a
test which interrupts a command mid-way always finds it mid-way, however fast or loaded the machine
(left alone, a small run can finish before the test's poll sees it start):

- training (pretrain, align): after its first two steps, each step waits until the engine has received a stop
  signal (SIGINT / SIGTERM), then trains and stops as it would;
- `caption`: after its first two batches, each batch waits until a signal interrupts it (Ctrl-C
  raises there) or kills the process.
"""

import sys
import time

from capalign.cli import main
from capalign.inference import generate
from capalign.train.engine import Engine

_train_batch, _caption_batch = Engine._train_batch, generate._caption_batch
_captioned = [0]


def _stalled_train_batch(self, batch, window):
    while self.state.step >= 2 and not self._stop:
        time.sleep(0.02)
    return _train_batch(self, batch, window)


def _stalled_caption_batch(*args, **kwargs):
    while _captioned[0] >= 2:
        time.sleep(0.02)
    _captioned[0] += 1
    return _caption_batch(*args, **kwargs)


if sys.argv[1:2] == ["caption"]:
    generate._caption_batch = _stalled_caption_batch
else:  # the captions a training run validates with are not stalled
    Engine._train_batch = _stalled_train_batch
main()
