"""Seconds per step and peak memory of every preset at its published size (random weights).

    python bench/bench_real_size.py [--presets clip-gpt2 clipcap ...] [--device cpu|cuda] [--precision bf16|no]
                                    [--steps 4] [--batch-size 4] [--images 40] [--workdir DIR]

For each preset: its backbones are built at their published size (tests/real_backbones.py: CLIP
ViT-B/32, GPT-2 124M / Medium, DistilGPT2, MobileNetV2 1.0/224, a byte-level BPE tokenizer with GPT-2's
50,257 entries), then, each in its own process through `capalign`'s own entry point:

  pretrain with the frozen-feature cache off and on (presets with a frozen encoder; the cache is
  built in a first, untimed run), align (presets with a decoder), and the stage-2 reference
  log-probabilities over every reference-versus-corrupted pair of the training split, computed once.

Step time is measured between the first and the last logged step (the first step's warm-up left
out); peak memory is the process's peak resident set (CPU) or peak allocated GPU memory (CUDA). With
`--device cuda` it also prints samples/s and model FLOPs utilisation: (2 × frozen-encoder parameters ×
patches, unless cached, + 6 × trained parameters × tokens) per sample × samples/s / `--peak-tflops`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PRESETS = ["clip-gpt2", "clip-gpt2-medium", "clipcap", "clipcap-mlp", "mobilenet-gpt2", "vit-scratch"]
CHILD = """
import json, resource, sys, torch
sys.path[:0] = [{bench!r}, {root!r}, {tests!r}]
try:
    if sys.argv[2] == "reference-pass":
        from bench_real_size import reference_pass
        reference_pass(*sys.argv[3:])
    else:
        from capalign.cli.main import main
        main(sys.argv[2:])
finally:
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available() else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    open(sys.argv[1], "w").write(json.dumps({{"peak_bytes": peak}}))
""".format(bench=str(ROOT / "bench"), root=str(ROOT), tests=str(ROOT / "tests"))


def measured(args: list[str], workdir: Path) -> int:
    """Run `capalign ARGS` (or `reference-pass RUN BATCH DEVICE OUT`) in a fresh process; returns its
    peak memory in bytes."""
    peak_file = workdir / "peak.json"
    subprocess.run([sys.executable, "-c", CHILD, str(peak_file), *args], check=True, cwd=workdir)
    return json.loads(peak_file.read_text())["peak_bytes"]


def step_seconds(run: Path, batch_size: int) -> float:
    """Seconds per optimiser step between the first and last logged steps (metrics.jsonl's samples/s
    is cumulative from the start of training)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [(r["step"], r["step"] * batch_size / r["samples_per_s"]) for r in records if "samples_per_s" in r]
    (first_step, first_t), (last_step, last_t) = timed[0], timed[-1]
    return (last_t - first_t) / (last_step - first_step) if last_step > first_step else last_t / last_step


def reference_pass(run: str, batch_size: str, device: str, out: str) -> None:
    """Child process: the stage-2 reference log-probs over the training split's corrupted pairs, timed."""
    import time

    from capalign.config import load_config
    from capalign.data.store import load_prepared
    from capalign.models.io import load_captioner
    from capalign.pairs.dataset import PairBatchMaker, PairSet
    from capalign.pairs.generated import corrupted_pairs
    from capalign.runs import CONFIG_NAME
    from capalign.train.align import attach_reference_logps

    config = load_config(Path(run) / CONFIG_NAME)
    split = load_prepared(config.data)["train"]
    reference, tokenizer, processor = load_captioner(Path(run), device)
    pairs = PairSet(split, corrupted_pairs(split, seed=0))
    started = time.perf_counter()
    attach_reference_logps(reference, pairs, PairBatchMaker(tokenizer, processor, config.model.max_caption_tokens),
                           int(batch_size), average=False)
    Path(out).write_text(json.dumps({"seconds": time.perf_counter() - started, "pairs": len(pairs)}))


def flops_per_sample(run: Path, cached: bool) -> float:
    """Approximate training FLOPs per sample (see the module docstring)."""
    from capalign.config import load_config
    from capalign.models.io import load_captioner
    from capalign.runs import CONFIG_NAME

    model = load_captioner(run, "cpu")[0]
    config = load_config(run / CONFIG_NAME).model
    vision = sum(p.numel() for n, p in model.named_parameters() if ".encoder." in f".{n}" or "vision" in n)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    patches = (config.image_size // 32) ** 2 + 1
    return (0 if cached else 2 * vision * patches) + 6 * trained * config.max_caption_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "no"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the accelerator's peak (H100 bf16 dense: 989)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from capalign.config import PRESETS as CONFIGS
    from capalign.data.store import load_prepared, prepare_shapes
    from real_backbones import preset_backbone_args

    scratch = None if args.workdir else tempfile.TemporaryDirectory(prefix="capalign-bench-real-")  # gigabytes: removed at the end
    work = args.workdir or Path(scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "shapes"
    if not data.is_dir():
        prepare_shapes(data, limit=args.images, seed=0)
    def settings(cache: bool) -> Path:
        """A config file: log every step, no validation or checkpoints inside the timed steps."""
        path = work / f"settings-cache-{cache}.yaml"
        path.write_text(yaml.safe_dump({
            "train": {"log_every": 1, "eval_every": 10**6, "checkpoint_every": 10**6, "select": "none", "feature_cache": cache},
            "align": {"log_every": 1, "eval_every": 10**6}}))
        return path

    common = ["--batch-size", str(args.batch_size), "--mixed-precision", args.precision, "--device", args.device,
              "--max-steps", str(args.steps)]
    rows = []
    for preset in args.presets:
        backbones = preset_backbone_args(preset, work / "backbones")
        model = CONFIGS[preset]["model"]
        row = {"preset": preset}
        runs = work / preset
        pretrain = ["pretrain", "--preset", preset, *backbones, "--data", str(data), *common]
        variants = [("cache off", False)]
        if model.get("freeze_vision"):
            measured([*pretrain, "--config", str(settings(True)), "--out", str(runs / "cache-build"), "--overwrite"], work)
            variants.append(("cache on", True))
        for label, cache in variants:
            out = runs / f"pretrain-{label.replace(' ', '-')}"
            peak = measured([*pretrain, "--config", str(settings(cache)), "--out", str(out), "--overwrite"], work)
            row[f"pretrain {label}"] = (step_seconds(out, args.batch_size), peak)
            if args.device.startswith("cuda"):
                rate = args.batch_size / row[f"pretrain {label}"][0]
                row[f"pretrain {label} samples/s"] = rate
                row[f"pretrain {label} MFU"] = flops_per_sample(out, cache) * rate / (args.peak_tflops * 1e12)
        pretrained = runs / "pretrain-cache-off"
        if model["arch"] != "contrastive":
            out = runs / "align"
            peak = measured(["align", "--model", str(pretrained), *common, "--config", str(settings(False)),
                                      "--out", str(out), "--overwrite"], work)
            row["align"] = (step_seconds(out, args.batch_size), peak)
            timing = work / "reference.json"
            peak = measured(["reference-pass", str(pretrained), str(args.batch_size), args.device, str(timing)], work)
            reference = json.loads(timing.read_text())
            row["reference log-probs"] = (reference["seconds"], peak, reference["pairs"])
        rows.append(row)
        print(json.dumps(row))

    images = sum(len(split) for split in load_prepared(data).values())
    print(f"\npublished-size backbones, random weights; {args.device}, --mixed-precision {args.precision}, "
          f"batch {args.batch_size}, {args.steps} steps, {images} shapes images")
    print("| preset | pretrain s/step (cache off) | pretrain s/step (cache on) | align s/step | reference log-probs | peak memory |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = []
        for key in ("pretrain cache off", "pretrain cache on", "align"):
            cells.append(f"{row[key][0]:.2f}" if key in row else "–")
        reference = row.get("reference log-probs")
        cells.append(f"{reference[0]:.1f} s for {reference[2]} pairs" if reference else "–")
        peaks = [v[1] for k, v in row.items() if isinstance(v, tuple)]
        cells.append(f"{max(peaks) / 2**30:.1f} GiB")
        print(f"| {row['preset']} | " + " | ".join(cells) + " |")
        if args.device.startswith("cuda"):
            print(f"|   | {row.get('pretrain cache off samples/s', 0):.0f} samples/s, MFU {row.get('pretrain cache off MFU', 0):.1%} | "
                  f"{row.get('pretrain cache on samples/s', 0):.0f} samples/s, MFU {row.get('pretrain cache on MFU', 0):.1%} | | | |")


if __name__ == "__main__":
    main()
