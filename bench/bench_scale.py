"""Time and peak memory of fetch, caption, evaluate and align's pair building as the data grows.

    python bench/bench_scale.py [--sizes 1000 4000 16000] [--commands fetch-photos fetch-shapes caption
                                evaluate align] [--metrics METRICS] [--workdir DIR] [--json FILE]
                                [--checkout DIR]

For each size N the bench draws N photos (640x480 JPEGs: a random gradient with a few random
rectangles, one caption each, in `photos-N/train/` with a metadata.jsonl), then runs each command
in its own process, through capalign's own entry point (this checkout, or --checkout DIR):

  fetch-photos  `fetch photos-N --image-size 256 --processes P` (the photos stored at 341x256; P:
                --fetch-processes, default fetch's own, min(4, CPUs))
  fetch-shapes  `fetch shapes --limit N --image-size 256`
  caption       `caption photos-N/train --output captions.jsonl` with the tiny model
  evaluate      `evaluate --data <fetched photos> --split train` (default metrics, `--clip-model self`
                so that CLIPScore and retrieval run on the images with the tiny model's head;
                metrics whose models are not cached here are reported missing by evaluate itself)
  align         `align --max-steps 1 --rounds 1 --pairs auto` on the fetched photos (pair building,
                the reference pass and one step)

The tiny model (the tests' TINY_MODEL) is pretrained once for 40 steps on a 40-image shapes set.
Peak memory is the command's own peak resident set (getrusage RUSAGE_SELF), with its peak anonymous
memory beside it (RssAnon, polled: the resident set less file pages such as memory-mapped Arrow
tables and the page cache of what it reads, which the kernel can drop); the largest child
process (METEOR's and SPICE's Java, PTB tokenisation; its own VmHWM, polled, since RUSAGE_CHILDREN
would count the parent's memory at the fork) is printed beside it, not counted in the table, except
for fetch-photos, whose image workers are children: its cells show the main process + the largest
worker (the command's total is at most main + P x worker).
With only fetch commands the tiny model is not built.
After the table, each command's growth from the smallest to the largest size: peak memory ratio and
anonymous-memory ratio and seconds-per-image ratio (1.0 = flat memory / linear time).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("fetch-photos", "fetch-shapes", "caption", "evaluate", "align")
FETCHES = ("fetch-photos", "fetch-shapes")  # need no model
WORKERS = ("fetch-photos",)  # whose children are its own worker processes, counted beside it
TINY_MODEL = {"vision_hidden": 32, "vision_layers": 1, "decoder_hidden": 32, "decoder_layers": 1, "heads": 2,
              "patch_size": 16, "projection_dim": 16, "max_caption_tokens": 20}
PRETRAIN_STEPS = 40  # enough for non-empty, varied captions (2 steps caption everything with "")
WORDS = "a an the red green blue small large dog cat car tree house person on in near with two one".split()


CHECKOUT = [ROOT]  # whose capalign the commands run (--checkout)
# A child's ru_maxrss counts its parent's memory at the fork (Linux keeps the pre-exec peak), so a
# worker spawned by a 200 MiB process reports 200 MiB: each child's own peak is its VmHWM, polled.
CHILD = """
import json, resource, sys, threading, time
hwm, anon = {}, [0]
def own_anon():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("RssAnon:")) * 1024
def watch():
    import psutil
    me = psutil.Process()
    while True:
        anon[0] = max(anon[0], own_anon())
        for child in me.children(recursive=True):
            try:
                with open(f"/proc/{child.pid}/status") as status:
                    kib = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
                hwm[child.pid] = max(hwm.get(child.pid, 0), kib * 1024)
            except (OSError, StopIteration):
                pass  # ended meanwhile
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
try:
    from capalign.cli.main import main
    main(sys.argv[2:])
finally:
    peak = {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "anon": max(anon[0], own_anon()), "children": max(hwm.values(), default=0)}
    open(sys.argv[1], "w").write(json.dumps(peak))
"""


def capalign(args: list[str], cwd: Path) -> tuple[float, int, int, int, int]:
    """Run `capalign ARGS` in a fresh process: (seconds, its own peak RSS bytes, its peak anonymous
    memory (RssAnon polled every 50 ms: RSS less the file pages, such as memory-mapped Arrow tables,
    that the kernel can drop), the peak RSS of its largest child process (fetch's image workers,
    METEOR's and SPICE's Java: VmHWM polled every 50 ms), exit status)."""
    env = dict(os.environ, PYTHONPATH=str(CHECKOUT[0]), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    peak_file = cwd / ".peak.json"
    peak_file.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(peak_file), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-4:])
        print(f"  capalign {' '.join(args)} exited {done.returncode}:\n{tail}", file=sys.stderr)
    peak = json.loads(peak_file.read_text()) if peak_file.is_file() else {"self": 0, "anon": 0, "children": 0}
    return seconds, peak["self"], peak["anon"], peak["children"], done.returncode


def draw_photos(folder: Path, count: int, seed: int = 0) -> None:
    """`count` 640x480 JPEGs with one caption each under folder/train (kept when already drawn)."""
    from PIL import Image, ImageDraw  # deferred: only the bench's drawing needs Pillow

    train = folder / "train"
    meta = train / "metadata.jsonl"
    if meta.is_file():
        return
    train.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for n in range(count):
        top, bottom = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
        image = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
        image = Image.composite(Image.new("RGB", image.size, top), Image.new("RGB", image.size, bottom),
                                image.convert("L"))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 4)):
            x, y = rng.randrange(600), rng.randrange(440)
            draw.rectangle([x, y, x + rng.randint(20, 200), y + rng.randint(20, 200)],
                           fill=tuple(rng.randrange(256) for _ in range(3)))
        name = f"{n:06d}.jpg"
        image.save(train / name, quality=85)
        caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))
        lines.append(json.dumps({"file_name": name, "captions": [caption, caption[::-1]]}))
    meta.write_text("\n".join(lines) + "\n")


def tiny_run(workdir: Path) -> Path:
    """The tiny model, pretrained 2 steps on 40 shapes (kept when already there)."""
    run = workdir / "runs" / "tiny"
    if (run / "config.yaml").exists() or any(run.glob("*.safetensors")):
        return run
    (workdir / "tiny.yaml").write_text(yaml.safe_dump({"model": TINY_MODEL, "train": {"batch_size": 8}}))
    for args in (["fetch", "shapes", "--limit", "40", "--out", "data/shapes-40"],
                 ["pretrain", "--data", "data/shapes-40", "--config", "tiny.yaml", "--max-steps", str(PRETRAIN_STEPS),
                  "--out", "runs/tiny"]):
        *_, status = capalign(args, workdir)
        if status:
            sys.exit(f"bench_scale: could not build the tiny model (capalign {' '.join(args)})")
    return run


def command_args(command: str, n: int, run: Path | None, metrics: str | None,
                 fetch_processes: int | None = None) -> list[str]:
    photos, fetched = f"photos-{n}", f"data/photos-{n}"
    if command == "fetch-photos":
        processes = ["--processes", str(fetch_processes)] if fetch_processes else []
        return ["fetch", photos, "--image-size", "256", "--out", fetched, *processes]
    if command == "fetch-shapes":
        return ["fetch", "shapes", "--limit", str(n), "--image-size", "256", "--out", f"data/shapes-{n}"]
    if command == "caption":
        return ["caption", f"{photos}/train", "--model", str(run), "--output", f"captions-{n}.jsonl", "--overwrite"]
    if command == "evaluate":
        extra = ["--metrics", metrics] if metrics else []
        return ["evaluate", "--model", str(run), "--data", fetched, "--split", "train", "--clip-model", "self",
                "--output", f"evaluate-{n}.json", "--overwrite", *extra]
    return ["align", "--model", str(run), "--data", fetched, "--max-steps", "1", "--rounds", "1", "--pairs", "auto",
            "--out", f"runs/align-{n}", "--overwrite"]


def _counted(command: str, m: dict, key: str = "peak_bytes") -> int:
    """The bytes a table cell counts (`key`: peak RSS, or peak anonymous memory): the main process,
    plus the largest worker for fetch-photos."""
    return m[key] + (m["child_peak_bytes"] if command in WORKERS else 0)


def _memory(command: str, m: dict) -> str:
    anon = f"anonymous {m['anon_peak_bytes'] / 2**30:.2f}"
    if command in WORKERS:
        return (f"main {m['peak_bytes'] / 2**30:.2f} ({anon}) + largest worker "
                f"{m['child_peak_bytes'] / 2**30:.2f} GiB")
    return f"{m['peak_bytes'] / 2**30:.2f} GiB ({anon})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument("--metrics", default=None, help="evaluate's --metrics (default: evaluate's default)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep photos, datasets and runs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="measure this checkout's capalign (default: this one)")
    parser.add_argument("--fetch-processes", type=int, default=None,
                        help="fetch-photos' --processes (default: fetch's own; a checkout without the option: leave out)")
    args = parser.parse_args()
    CHECKOUT[0] = args.checkout.resolve()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = tiny_run(workdir) if set(args.commands) - set(FETCHES) else None
    results: dict[str, dict[int, dict]] = {c: {} for c in args.commands}
    for n in sorted(args.sizes):
        draw_photos(workdir / f"photos-{n}", n)
        for command in COMMANDS:  # fetch first: evaluate and align read the fetched photos
            if command not in args.commands and not (command == "fetch-photos" and
                                                     {"evaluate", "align"} & set(args.commands)):
                continue
            seconds, peak, anon, child, status = capalign(
                command_args(command, n, run, args.metrics, args.fetch_processes), workdir)
            if command in results:
                results[command][n] = {"seconds": seconds, "peak_bytes": peak, "anon_peak_bytes": anon,
                                       "child_peak_bytes": child, "status": status}
                beside = "largest worker" if command in WORKERS else "largest child"
                print(f"{command:13s} {n:>7,} images  {seconds:8.1f} s  main {peak / 2**20:6.0f} MiB"
                      f" (anonymous {anon / 2**20:.0f} MiB)  ({beside} {child / 2**20:.0f} MiB)"
                      f"{'' if status == 0 else f'  (exit {status})'}", flush=True)
    print(f"\n| command | {' | '.join(f'{n:,} images' for n in sorted(args.sizes))} | memory × | anonymous memory × "
          f"| time/image × |")
    print(f"|---|{'---|' * len(args.sizes)}---|---|---|")
    for command, by_size in results.items():
        sizes = sorted(by_size)
        cells = [f"{by_size[n]['seconds']:.0f} s, {_memory(command, by_size[n])}" for n in sizes]
        lo, hi = by_size[sizes[0]], by_size[sizes[-1]]
        memory = _counted(command, hi) / max(_counted(command, lo), 1)
        anon = _counted(command, hi, "anon_peak_bytes") / max(_counted(command, lo, "anon_peak_bytes"), 1)
        per_image = (hi["seconds"] / sizes[-1]) / max(lo["seconds"] / sizes[0], 1e-9)
        print(f"| {command} | {' | '.join(cells)} | {memory:.2f} | {anon:.2f} | {per_image:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
