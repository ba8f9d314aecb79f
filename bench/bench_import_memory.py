"""Peak memory of `capalign fetch` on a folder of N and 10*N synthetic photos.

Each size is imported in a fresh subprocess (so peaks do not mix). The child reports its peak RSS
(`resource.getrusage`) split, by polling /proc/self/status (Linux), into anonymous memory (heap:
what the import really needs) and file-backed pages (memory-mapped Arrow files, reclaimable), plus
its anonymous baseline after importing datasets/PIL. Flat memory means anonymous ratios near 1.

    python bench/bench_import_memory.py [--n 200] [--width 640] [--height 480]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, re, resource, sys, threading, time
from pathlib import Path
import datasets, PIL.Image  # the libraries' own footprint belongs to the baseline
from capalign.data.importers import import_source

def status():
    txt = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", txt).group(1)) * 1024 for k in ("RssAnon", "RssFile")}

peak = status()
before = dict(peak)
def poll():
    while True:
        for k, v in status().items():
            peak[k] = max(peak[k], v)
        time.sleep(0.01)
threading.Thread(target=poll, daemon=True).start()
t = time.perf_counter()
rep = import_source(sys.argv[1], Path(sys.argv[2]), image_size=256)
secs = time.perf_counter() - t
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
print(json.dumps({"rows": sum(rep.rows.values()), "before": before, "peak": peak, "maxrss": maxrss,
                  "seconds": secs}))
"""

def make_folder(root: Path, n: int, size: tuple[int, int]) -> None:
    """n random-noise JPEGs (worst case for JPEG size) with one metadata.jsonl row each."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    with open(root / "metadata.jsonl", "w") as meta:
        for i in range(n):
            arr = np.roll(base, i * 7, axis=1)
            Image.fromarray(arr).save(root / f"{i:06d}.jpg", quality=90)
            meta.write(json.dumps({"file_name": f"{i:06d}.jpg", "captions": [f"photo {i}", f"image {i}"]}) + "\n")


def run(folder: Path, out: Path) -> dict:
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out)], cwd=repo,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()
    mib = 1 / 2**20
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.n, 10 * args.n):
            folder = Path(tmp) / f"src{n}"
            t = time.perf_counter()
            make_folder(folder, n, (args.width, args.height))
            src_mib = sum(p.stat().st_size for p in folder.iterdir()) * mib
            print(f"made {n} images ({src_mib:.0f} MiB of JPEG) in {time.perf_counter() - t:.1f}s", flush=True)
            r = run(folder, Path(tmp) / f"out{n}")
            results[n] = r
            print(f"N={n:6d}: rows {r['rows']:6d}  {r['seconds']:5.1f}s  "
                  f"peak RSS {r['maxrss'] * mib:6.1f} MiB = anonymous {r['peak']['RssAnon'] * mib:6.1f} MiB "
                  f"(baseline {r['before']['RssAnon'] * mib:5.1f}) + file-backed {r['peak']['RssFile'] * mib:6.1f} MiB",
                  flush=True)
    a, b = results[args.n], results[10 * args.n]
    grow = lambda r: r["peak"]["RssAnon"] - r["before"]["RssAnon"]
    print(f"ratio 10N/N: peak RSS {b['maxrss'] / a['maxrss']:.2f}, anonymous peak "
          f"{b['peak']['RssAnon'] / a['peak']['RssAnon']:.2f}, anonymous growth over baseline "
          f"{grow(b) / max(1, grow(a)):.2f}")
    print("file-backed pages are the memory-mapped Arrow files datasets reads back while saving "
          "(page cache the kernel reclaims under pressure), not heap the import needs.")

if __name__ == "__main__":
    main()
