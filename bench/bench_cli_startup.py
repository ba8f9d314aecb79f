"""How long `capalign --help` and every `capalign CMD --help` take, as a user would run them.

Each is a fresh `python -m capalign ... --help` subprocess (what the console script runs); the median
of --repeat runs is printed per command. Target: under 0.5 s each.

    python bench/bench_cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["fetch", "pretrain", "align", "caption", "evaluate", "compare", "demo", "push"]


def time_once(args: list[str], env: dict) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "capalign", *args], capture_output=True, env=env)
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    for command in [None, *COMMANDS]:
        argv = ["--help"] if command is None else [command, "--help"]
        times, code = [], 0
        for _ in range(args.repeat):
            seconds, code = time_once(argv, env)
            times.append(seconds)
        label = "capalign " + " ".join(argv)
        if code != 0:
            print(f"{label:<32} exit {code} (no such command here)")
            continue
        rows.append(statistics.median(times))
        print(f"{label:<32} median {statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f}, n={args.repeat})")
    if rows:
        print(f"{'slowest':<32} {max(rows):.3f} s; target < 0.5 s")


if __name__ == "__main__":
    main()
