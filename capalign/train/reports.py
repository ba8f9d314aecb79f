"""What training reports: the learning-curve PNG, the `--dry-run` table, and the table shown at the
end of `capalign align` (the aligned model against its reference), through capalign.reporting."""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path
from typing import Callable

import torch

from capalign import reporting
from capalign.data.store import SplitImages
from capalign.inference.generate import DecodeOptions, caption_images
from capalign.inference.scorer import RunScorer
from capalign.metrics import MetricOptions, evaluate_captions
from capalign.pairs.ranker import rank_candidates
from capalign.runs import atomic_write_text

REPORT_METRICS = ["CIDEr", "Hallucination", "Distinct-1", "Distinct-2"]
RETRIEVAL_REPORTED = ["I2T-R@1", "I2T-R@5", "T2I-R@1", "T2I-R@5"]


def _summary(captions: dict[str, str], split, model, tokenizer, processor) -> dict[str, float]:
    """The report's metrics of one model's captions; retrieval with its own head when it has one, so
    damage to image–text alignment shows."""
    ids = list(split["image_id"])
    references = dict(zip(ids, split["captions"]))
    objects = dict(zip(ids, split["objects"])) if "objects" in split.column_names else None
    metrics = [m for m in REPORT_METRICS if m != "Hallucination" or objects is not None]
    options, images = MetricOptions(), None
    if model.head is not None:
        metrics += RETRIEVAL_REPORTED
        options.contrastive_scorer = RunScorer(model, tokenizer, processor)
        images = SplitImages(split)  # decoded a batch at a time by the image metrics
    summary = dict(evaluate_captions(captions, references, metrics, images=images, objects=objects, options=options).summary)
    summary["Length"] = sum(len(c.split()) for c in captions.values()) / max(len(captions), 1)
    return summary


def alignment_report(policy, reference, tokenizer, processor, split, run_dir: Path, held_out: dict | None = None) -> dict:
    """Greedy captions of both models on `split`, their metrics, the aligned model's win rate under
    the same ranker that ranked the training pairs, and (if given) its reward metrics on the first
    round's held-out pairs against the pretrained reference; written to alignment_report.json."""
    images = split["image"]  # a lazy column: captioning decodes a batch at a time
    ids = list(split["image_id"])
    with reporting.progress("report: captioning", 2 * len(images)) as advance:
        aligned = dict(zip(ids, caption_images(policy, tokenizer, processor, images, DecodeOptions())))
        advance(completed=len(images))
        before = dict(zip(ids, caption_images(reference, tokenizer, processor, images, DecodeOptions())))
        advance(completed=2 * len(images))
    objects = split["objects"] if "objects" in split.column_names else None
    ranked = rank_candidates([[aligned[i], before[i]] for i in ids], split["captions"], objects)
    wins = sum(a.score > b.score for a, b in ranked)
    ties = sum(a.score == b.score for a, b in ranked)
    report = {
        "split_images": len(ids),
        "reference": _summary(before, split, reference, tokenizer, processor),
        "aligned": _summary(aligned, split, policy, tokenizer, processor),
        "win_rate": wins / len(ids),
        "tie_rate": ties / len(ids),
        "loss_rate": (len(ids) - wins - ties) / len(ids),
        "held_out_pairs": held_out,
    }
    atomic_write_text(Path(run_dir) / "alignment_report.json", json.dumps(report, indent=2))
    rows = [[name, report["reference"][name], report["aligned"][name]] for name in report["aligned"]]
    if held_out:  # {} when every held-out pair tied: nothing was scored
        rows.append(["held-out pair accuracy", "", held_out["eval_rewards/accuracies"]])
    rows.append(["ranker win / tie / loss", "", f"{report['win_rate']:.0%} / {report['tie_rate']:.0%} / {report['loss_rate']:.0%}"])
    reporting.table(f"aligned vs reference on {len(ids)} evaluation images", ["metric", "reference", "aligned"], rows)
    return report


NOT_PLOTTED = ("step", "epoch", "round", "lr", "samples_per_s")  # axes and bookkeeping, not quantities

# One panel per family of quantities, in this order; the first family whose test accepts a key takes it.
CURVE_FAMILIES: list[tuple[str, Callable[[str], bool]]] = [
    ("validation", lambda k: k.startswith(("val", "eval_"))),
    ("losses", lambda k: k == "loss" or k.endswith("_loss")),
    ("accuracies", lambda k: "accurac" in k),
    ("preference rewards", lambda k: k.startswith("rewards/")),
    ("log-probs", lambda k: k.startswith("logps/")),
    ("reward (SCST)", lambda k: k.startswith(("reward/", "advantage/"))),
    ("KL to the reference", lambda k: k == "kl"),
    ("caption length (words)", lambda k: k == "length"),
    ("other", lambda k: True),
]


def curve_panels(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """{family: {key: (steps, values)}} of every numeric series in metrics.jsonl records, families
    with no series left out."""
    panels: dict[str, dict[str, tuple[list, list]]] = {}
    for record in records:
        for key, value in record.items():
            if key in NOT_PLOTTED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            family = next(name for name, accepts in CURVE_FAMILIES if accepts(key))
            xs, ys = panels.setdefault(family, {}).setdefault(key, ([], []))
            xs.append(record["step"])
            ys.append(value)
    order = [name for name, _ in CURVE_FAMILIES]
    return dict(sorted(panels.items(), key=lambda item: order.index(item[0])))


def round_starts(records: list[dict]) -> list[float]:
    """Where each round after the first begins (between its predecessor's last step and its first)."""
    starts, last = [], {}
    for record in records:
        r = record.get("round")
        if r is None:
            continue
        if last and r != last["round"]:
            starts.append((last["step"] + record["step"]) / 2)
        last = {"round": r, "step": record["step"]}
    return starts


def curves_figure(records: list[dict]):
    """A figure with one panel per family (curve_panels), two columns, rounds as dashed vertical lines."""
    import matplotlib  # deferred: matplotlib is slow to import; only the curves need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the headless backend

    panels = curve_panels(records)
    columns = 2 if len(panels) > 1 else 1
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        fig.delaxes(ax)
    starts = round_starts(records)
    for ax, (family, series) in zip(flat, panels.items()):
        for key, (xs, ys) in series.items():
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
        for x in starts:
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(family, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_curves(metrics_path: Path, out: Path) -> None:
    """Draw metrics.jsonl as curves_figure into `out` (written under a temporary name, then renamed)."""
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig = curves_figure(records)
    import matplotlib.pyplot as plt  # deferred: curves_figure chose the headless backend first
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)


def report_dry_run(captioner, pairs, collate, loss_fn, batch_size: int) -> None:
    """Build one batch and run one forward pass; report parameter counts, loss and peak memory as a table."""
    batch = collate([pairs[i] for i in range(min(batch_size, len(pairs)))])
    with torch.no_grad():
        loss, _ = loss_fn(captioner, batch)
    total = sum(p.numel() for p in captioner.parameters())
    trainable = sum(p.numel() for p in captioner.parameters() if p.requires_grad)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frozen = ", ".join(k for k, v in captioner.frozen.items() if v) or "nothing"
    reporting.table(
        "dry run",
        ["what", "value"],
        [["architecture", captioner.arch], ["frozen", frozen], ["training pairs", len(pairs)],
         ["parameters", f"{total:,}"], ["trainable", f"{trainable:,}"],
         ["batch", str(tuple(batch["pixel_values"].shape))], ["first loss", float(loss)], ["peak RSS (MiB)", f"{peak_mib:.0f}"]],
    )
