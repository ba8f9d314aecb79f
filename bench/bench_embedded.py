"""The README's headline numbers over several seeds: the demo's commands per seed, then mean ± sd.

    python bench/bench_embedded.py [--seeds 0 1 2] [--workdir runs/bench-embedded] [--output FILE.json]
                                   [--systems dpo | all | NAME ...] [--quick]
    python bench/bench_embedded.py --combine seed-0.json seed-1.json ...   (the report alone, from --output files;
                                   files of one seed, e.g. with different --systems, are merged)

For each seed, exactly what a user types (through `capalign`'s own entry point):

    capalign fetch shapes
    capalign pretrain --seed S --out W/seed-S/pretrain
    capalign align --model W/seed-S/pretrain --beta 0.1 --out W/seed-S/align                       (dpo)
    capalign align --model W/seed-S/pretrain --method scst --reward cider SCST --out W/seed-S/scst  (scst)
    capalign align --model W/seed-S/pretrain --method scst --reward cider SCST --sft-weight 0
                   --out W/seed-S/scst-nosft                                                       (scst-nosft)
    capalign align --model W/seed-S/pretrain --method scst --reward cider:1,hallucination:-1 SCST
                   --out W/seed-S/scst-halluc                                                      (scst-halluc)
    capalign align --model W/seed-S/align --method scst --reward cider SCST --out W/seed-S/dpo-scst (dpo-scst)
    capalign evaluate --model W/seed-S/RUN --metrics cider,bleu,meteor,hallucination,retrieval,diversity

SCST is `SCST_SETTINGS` below (the settings the README measured). `--systems dpo` (the default) is
the DPO comparison alone, checked against issue 13's bars; `--systems all` adds the SCST
systems, checked against issue 24's (`scst-nosft`, SCST without its supervised term, is the ablation
and has no bars): CIDEr >= 110% of pretrained and above DPO's (with the
hallucination penalty: above pretrained), R@1 >= 95% of
pretrained both ways, Hallucination not above pretrained (at most half of it with the penalty),
mean caption length not above the longest reference. `--quick` rehearses the whole pipeline in a
few minutes (60 shapes images, a few steps per stage; its figures mean nothing).

The data is the same for every seed (shapes, seed 0); the seed fixes initialisation, data order and
sampling. Prints each seed's figures per system, their mean ± sd (sample sd, n-1) and min–max, the
wall time of each system's stage-2 run, and whether each bar holds for every seed. Exits 1 when a
bar fails for any seed.
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
METRICS = "cider,bleu,meteor,hallucination,retrieval,diversity"
SHOWN = ["CIDEr", "Hallucination", "I2T-R@1", "T2I-R@1", "Distinct-2", "Length"]
SCST_SCHEDULE = ["--batch-size", "16", "--num-samples", "5", "--max-steps", "800", "--lr", "5e-4", "--beta", "0.1",
                 "--contrastive-weight", "2"]  # seed-0 tuning: README "Which alignment method?"
SCST_SETTINGS = [*SCST_SCHEDULE, "--sft-weight", "1"]
QUICK = {"pretrain": ["--max-steps", "4"], "dpo": ["--max-steps", "2", "--rounds", "1"],
         "scst": ["--max-steps", "2", "--batch-size", "8"]}
# name: (the run it starts from, align's arguments)
SYSTEMS = {
    "dpo": ("pretrain", ["--beta", "0.1"]),
    "scst": ("pretrain", ["--method", "scst", "--reward", "cider", *SCST_SETTINGS]),
    "scst-nosft": ("pretrain", ["--method", "scst", "--reward", "cider", *SCST_SCHEDULE, "--sft-weight", "0"]),
    "scst-halluc": ("pretrain", ["--method", "scst", "--reward", "cider:1,hallucination:-1", *SCST_SETTINGS]),
    "dpo-scst": ("dpo", ["--method", "scst", "--reward", "cider", *SCST_SETTINGS]),
}


def capalign(*args: str) -> None:
    """One `capalign` command, as a user runs it; stops the bench when it fails."""
    subprocess.run([sys.executable, "-m", "capalign", *args], check=True)


def run_seed(seed: int, workdir: Path, systems: list[str], data: list[str], quick: bool) -> dict:
    """The commands for one seed; returns each model's figures and each stage-2 run's wall time."""
    out = workdir / f"seed-{seed}"
    runs = {"pretrained": out / "pretrain"}
    seconds = {}
    if not (runs["pretrained"] / "run.json").is_file():
        capalign("pretrain", *data, "--seed", str(seed), "--out", str(runs["pretrained"]), *(QUICK["pretrain"] if quick else []))
    for name in systems:
        base, args = SYSTEMS[name]
        run = runs[name] = out / name
        if not (run / "run.json").is_file():
            started = time.perf_counter()
            extra = (QUICK["scst"] if "scst" in args else QUICK["dpo"]) if quick else []
            model = runs["pretrained"] if base == "pretrain" else runs[base]
            capalign("align", "--model", str(model), *args, *extra, "--out", str(run))
            seconds[name] = time.perf_counter() - started
    figures = {"seed": seed, "seconds": seconds}
    for name, run in runs.items():
        scores = out / f"eval-{name}.json"
        capalign("evaluate", "--model", str(run), *data, "--metrics", METRICS, "--output", str(scores), "--overwrite")
        evaluation = json.loads(scores.read_text())
        figures[name] = evaluation["metrics"]
        captions = list(evaluation.get("captions", {}).values())
        figures[name]["Length"] = sum(len(c.split()) for c in captions) / max(len(captions), 1)
    if "dpo" in systems:
        report = json.loads((runs["dpo"] / "alignment_report.json").read_text())
        figures["held_out_pair_accuracy"] = report["held_out_pairs"]["eval_rewards/accuracies"]
    return figures


def merged_by_seed(saved: list[dict]) -> list[dict]:
    """One figures record per seed from several --output files (e.g. seed-0.json, then seed-0.h.json for
    one more system on the same seed's runs); a later file's figures of a system replace an earlier one's."""
    by_seed: dict[int, dict] = {}
    for doc in saved:
        for figures in doc["seeds"]:
            merged = by_seed.setdefault(figures["seed"], {"seconds": {}})
            merged["seconds"].update(figures["seconds"])
            merged.update({key: value for key, value in figures.items() if key != "seconds"})
    return [by_seed[seed] for seed in sorted(by_seed)]


def longest_reference(data: list[str]) -> int:
    """Words in the longest test reference (issue 24's bar on caption length)."""
    from datasets import load_from_disk  # deferred: only for this figure

    folder = data[1] if data else "data/shapes"
    return max(len(c.split()) for refs in load_from_disk(folder)["test"]["captions"] for c in refs)


def bars(f: dict, longest: int) -> dict[str, bool]:
    """Issue 13's bars for DPO and issue 24's for the SCST systems, for one seed."""
    before = f["pretrained"]
    out = {}
    if "dpo" in f:
        after = f["dpo"]
        out.update({
            "dpo: I2T-R@1 >= 95% of pretrained": after["I2T-R@1"] >= 0.95 * before["I2T-R@1"],
            "dpo: T2I-R@1 >= 95% of pretrained": after["T2I-R@1"] >= 0.95 * before["T2I-R@1"],
            "dpo: held-out pair accuracy >= 0.95": f["held_out_pair_accuracy"] >= 0.95,
            "dpo: Hallucination <= 1/2 of pretrained": after["Hallucination"] <= 0.5 * before["Hallucination"],
            "dpo: CIDEr >= 98% of pretrained": after["CIDEr"] >= 0.98 * before["CIDEr"],
        })
    for name in ("scst", "scst-halluc", "dpo-scst"):
        if name not in f:
            continue
        after = f[name]
        if name == "scst-halluc":  # issue 24: the penalty halves hallucination "while CIDEr still rises"
            out[f"{name}: CIDEr above pretrained"] = after["CIDEr"] > before["CIDEr"]
        else:
            out[f"{name}: CIDEr >= 110% of pretrained"] = after["CIDEr"] >= 1.1 * before["CIDEr"]
        if "dpo" in f:  # for dpo-scst: SCST did not undo what DPO reached
            out[f"{name}: CIDEr above DPO's"] = after["CIDEr"] > f["dpo"]["CIDEr"]
        out[f"{name}: I2T-R@1 >= 95% of pretrained"] = after["I2T-R@1"] >= 0.95 * before["I2T-R@1"]
        out[f"{name}: T2I-R@1 >= 95% of pretrained"] = after["T2I-R@1"] >= 0.95 * before["T2I-R@1"]
        share = 0.5 if name == "scst-halluc" else 1.0
        out[f"{name}: Hallucination <= {share:g} x pretrained"] = after["Hallucination"] <= share * before["Hallucination"]
        out[f"{name}: length <= longest reference ({longest} words)"] = after["Length"] <= longest
    return out


def summary(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-embedded"))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--systems", nargs="+", default=["dpo"], help="dpo (default), all, or names from: " + ", ".join(SYSTEMS))
    parser.add_argument("--quick", action="store_true", help="rehearse on 60 images with a few steps per stage")
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="report on earlier runs' --output files (e.g. one per seed, run side by side) instead of running")
    args = parser.parse_args()
    systems = list(SYSTEMS) if args.systems == ["all"] else args.systems
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)} or all")
    for name in list(systems):  # a system that starts from another needs that one
        base = SYSTEMS[name][0]
        if base != "pretrain" and base not in systems:
            systems.insert(systems.index(name), base)

    if args.quick:
        folder = args.workdir / "shapes-quick"
        if not folder.is_dir() and not args.combine:
            capalign("fetch", "shapes", "--limit", "60", "--out", str(folder))
        data = ["--data", str(folder)]
    else:
        if not args.combine:
            capalign("fetch", "shapes")
        data = []
    if args.combine:
        results = merged_by_seed([json.loads(path.read_text()) for path in args.combine])
        systems = [name for name in SYSTEMS if all(name in f for f in results)]
    else:
        results = [run_seed(seed, args.workdir, systems, data, args.quick) for seed in args.seeds]
    failed = report(results, systems, longest_reference(data))
    if args.output is not None:
        args.output.write_text(json.dumps({"seeds": results, "failed": failed}, indent=1))
    sys.exit(1 if failed else 0)


def report(results: list[dict], systems: list[str], longest: int) -> list[str]:
    """Print each seed's figures, their mean ± sd and the bars; returns the bars that failed."""
    names = ["pretrained", *systems]
    print(f"\nshapes test split, tiny preset; {len(results)} seeds: {[f['seed'] for f in results]}; "
          f"SCST: {' '.join(SCST_SETTINGS)}")
    for f in results:
        print(f"\nseed {f['seed']}: " + " | ".join(["system", *SHOWN, "stage-2 s"]))
        for name in names:
            cells = [f"{f[name][m]:.3f}" for m in SHOWN]
            print(" | ".join([name, *cells, f"{f['seconds'][name]:.0f}" if name in f["seconds"] else "-"]))
    print("\nmean ± sd (min–max):")
    for name in names:
        for m in SHOWN:
            print(f"  {name} {m}: {summary([f[name][m] for f in results])}")
    if "dpo" in systems:
        print(f"  dpo held-out pair accuracy: {summary([f['held_out_pair_accuracy'] for f in results])}")
    failed = [f"seed {f['seed']}: {bar}" for f in results for bar, ok in bars(f, longest).items() if not ok]
    print("\nbars: " + ("all hold on every seed" if not failed else "FAILED — " + "; ".join(failed)))
    return failed


if __name__ == "__main__":
    main()
