"""The README's headline numbers over several seeds: the demo's commands per seed, then mean ± sd.

    python bench/bench_embedded.py [--seeds 0 1 2] [--workdir runs/bench-embedded] [--output FILE.json]

For each seed, exactly what a user types (through `capalign`'s own entry point):

    capalign fetch shapes
    capalign pretrain --seed S --out W/seed-S/pretrain
    capalign align --model W/seed-S/pretrain --beta 0.1 --out W/seed-S/align
    capalign evaluate --model W/seed-S/{pretrain,align} --metrics cider,bleu,meteor,hallucination,retrieval

The data is the same for every seed (shapes, seed 0); the seed fixes initialisation, data order and
sampling. Prints each seed's pretrained and aligned CIDEr, Hallucination, image→text and text→image
R@1 and held-out pair accuracy, their mean ± sd (sample sd, n-1) and min–max, and whether each of
issue 13's bars holds for every seed: retrieval R@1 ≥ 95% of pretrained (both directions), held-out
pair accuracy ≥ 0.95, Hallucination ≤ ½ of pretrained, CIDEr at most 2% below pretrained.
Exits 1 when a bar fails for any seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
METRICS = "cider,bleu,meteor,hallucination,retrieval"
SHOWN = ["CIDEr", "Hallucination", "I2T-R@1", "T2I-R@1"]


def capalign(*args: str) -> None:
    """One `capalign` command, as a user runs it; stops the bench when it fails."""
    subprocess.run([sys.executable, "-m", "capalign", *args], check=True)


def run_seed(seed: int, workdir: Path) -> dict:
    """The demo's commands for one seed; returns the figures of both models."""
    out = workdir / f"seed-{seed}"
    pretrained, aligned = out / "pretrain", out / "align"
    started = time.perf_counter()
    if not (pretrained / "run.json").is_file():
        capalign("pretrain", "--seed", str(seed), "--out", str(pretrained))
    if not (aligned / "run.json").is_file():
        capalign("align", "--model", str(pretrained), "--beta", "0.1", "--out", str(aligned))
    figures = {"seed": seed}
    for name, run in (("pretrained", pretrained), ("aligned", aligned)):
        scores = out / f"eval-{name}.json"
        capalign("evaluate", "--model", str(run), "--metrics", METRICS, "--output", str(scores), "--overwrite")
        figures[name] = json.loads(scores.read_text())["metrics"]
    report = json.loads((aligned / "alignment_report.json").read_text())
    figures["held_out_pair_accuracy"] = report["held_out_pairs"]["eval_rewards/accuracies"]
    figures["seconds"] = time.perf_counter() - started
    return figures


def bars(f: dict) -> dict[str, bool]:
    """Issue 13's bars for one seed."""
    before, after = f["pretrained"], f["aligned"]
    return {
        "I2T-R@1 >= 95% of pretrained": after["I2T-R@1"] >= 0.95 * before["I2T-R@1"],
        "T2I-R@1 >= 95% of pretrained": after["T2I-R@1"] >= 0.95 * before["T2I-R@1"],
        "held-out pair accuracy >= 0.95": f["held_out_pair_accuracy"] >= 0.95,
        "Hallucination <= 1/2 of pretrained": after["Hallucination"] <= 0.5 * before["Hallucination"],
        "CIDEr >= 98% of pretrained": after["CIDEr"] >= 0.98 * before["CIDEr"],
    }


def summary(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-embedded"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    capalign("fetch", "shapes")
    results = [run_seed(seed, args.workdir) for seed in args.seeds]
    print(f"\nshapes test split, tiny preset, align --beta 0.1; {len(results)} seeds: {args.seeds}")
    header = ["seed"] + [f"{m} {w}" for m in SHOWN for w in ("pre", "aligned")] + ["held-out acc", "s"]
    print(" | ".join(header))
    for f in results:
        cells = [str(f["seed"])] + [f"{f[w][m]:.3f}" for m in SHOWN for w in ("pretrained", "aligned")]
        print(" | ".join(cells + [f"{f['held_out_pair_accuracy']:.3f}", f"{f['seconds']:.0f}"]))
    print("\nmean ± sd (min–max):")
    for m in SHOWN:
        for w in ("pretrained", "aligned"):
            print(f"  {m} {w}: {summary([f[w][m] for f in results])}")
    print(f"  held-out pair accuracy: {summary([f['held_out_pair_accuracy'] for f in results])}")
    failed = []
    for f in results:
        for bar, ok in bars(f).items():
            if not ok:
                failed.append(f"seed {f['seed']}: {bar}")
    print("\nbars: " + ("all hold on every seed" if not failed else "FAILED — " + "; ".join(failed)))
    if args.output is not None:
        args.output.write_text(json.dumps({"seeds": results, "failed": failed}, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
