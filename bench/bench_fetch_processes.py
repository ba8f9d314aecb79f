"""Wall time and peak memory of `capalign fetch` of a photo folder with one process and with several.

    python bench/bench_fetch_processes.py [--images 1000] [--processes 1 2] [--repeats 1] [--workdir DIR]

Draws the photos as bench_scale.py does (640x480 JPEGs, one caption each; kept in --workdir), then
runs `fetch photos --image-size 256 --processes P` in its own process for each P, --repeats times in
turn, and prints the best wall time, the main process's and the largest worker's peak memory, and
the speed-up over the first P. The datasets written are checked to be the same rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench_scale import capalign, draw_photos  # bench/ is this script's folder, first on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the photos and datasets here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    workdir.mkdir(parents=True, exist_ok=True)
    draw_photos(workdir / "photos", args.images)
    best: dict[int, tuple[float, int, int]] = {}
    for _ in range(args.repeats):
        for p in args.processes:
            seconds, peak, child, status = capalign(["fetch", "photos", "--image-size", "256", "--processes", str(p),
                                                     "--out", f"data/p{p}"], workdir)
            if status:
                sys.exit(f"bench_fetch_processes: fetch --processes {p} exited {status}")
            if p not in best or seconds < best[p][0]:
                best[p] = (seconds, peak, child)
    first = args.processes[0]
    print(f"\n| --processes | seconds ({args.images:,} photos) | main MiB | largest worker MiB | speed-up over {first} |")
    print("|---|---|---|---|---|")
    for p, (seconds, peak, child) in best.items():
        print(f"| {p} | {seconds:.1f} | {peak / 2**20:.0f} | {child / 2**20:.0f} | {best[first][0] / seconds:.2f}x |")
    files = {p: sorted(f.read_bytes() for f in (workdir / f"data/p{p}").rglob("*.arrow")) for p in args.processes}
    print("same Arrow files for every --processes:", all(f == files[first] for f in files.values()))


if __name__ == "__main__":
    main()
