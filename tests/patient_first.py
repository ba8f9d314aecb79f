"""A stand-in launched by torchrun (tests/test_distributed.py): a process group that times out after
TIMEOUT seconds, and a main-process-first block in which the main process works for longer than that.
`patient`: capalign.distributed.main_process_first; `plain`: accelerate's, on the launch's own group.
Each process that gets through writes `passed-<rank>` in the working directory (torchrun merges the
processes' stdout, and two prints can land on one line)."""

import sys
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

mode, timeout, work = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))

from capalign.distributed import main_process_first, process_state  # noqa: E402  (after the group exists)

state = process_state()
block = main_process_first() if mode == "patient" else state.main_process_first()
with block:
    if state.is_main_process:
        time.sleep(work)
Path(f"passed-{state.process_index}").write_text(f"process {state.process_index} passed")
dist.destroy_process_group()
