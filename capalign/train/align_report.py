"""The table printed at the end of `capalign align`: the aligned model against its reference."""

from __future__ import annotations

import json
from pathlib import Path

from capalign import ui
from capalign.generate import DecodeOptions, caption_images
from capalign.train.judge import judge_candidates
from capalign.workspace import atomic_write_text

REPORT_METRICS = ["CIDEr", "Hallucination", "Distinct-1", "Distinct-2"]


def _summary(captions: dict[str, str], split) -> dict[str, float]:
    from capalign.metrics import evaluate_captions

    references = dict(zip(split["image_id"], split["captions"]))
    objects = dict(zip(split["image_id"], split["objects"])) if "objects" in split.column_names else None
    metrics = [m for m in REPORT_METRICS if m != "Hallucination" or objects is not None]
    summary = dict(evaluate_captions(captions, references, metrics, objects=objects).summary)
    summary["Length"] = sum(len(c.split()) for c in captions.values()) / max(len(captions), 1)
    return summary


def alignment_report(policy, reference, tokenizer, processor, split, run_dir: Path, held_out: dict | None = None) -> dict:
    """Greedy captions of both models on `split`, their metrics, the aligned model's win rate under
    the same judge that ranked the training pairs, and (if given) its reward metrics on the first
    round's held-out pairs against the pretrained reference; written to alignment_report.json."""
    images = list(split["image"])
    ids = list(split["image_id"])
    aligned = dict(zip(ids, caption_images(policy, tokenizer, processor, images, DecodeOptions())))
    before = dict(zip(ids, caption_images(reference, tokenizer, processor, images, DecodeOptions())))
    objects = split["objects"] if "objects" in split.column_names else None
    judged = judge_candidates([[aligned[i], before[i]] for i in ids], split["captions"], objects)
    wins = sum(a.score > b.score for a, b in judged)
    ties = sum(a.score == b.score for a, b in judged)
    report = {
        "split_images": len(ids),
        "reference": _summary(before, split),
        "aligned": _summary(aligned, split),
        "win_rate": wins / len(ids),
        "tie_rate": ties / len(ids),
        "loss_rate": (len(ids) - wins - ties) / len(ids),
        "held_out_pairs": held_out,
    }
    atomic_write_text(Path(run_dir) / "alignment_report.json", json.dumps(report, indent=2))
    rows = [[name, report["reference"][name], report["aligned"][name]] for name in report["aligned"]]
    if held_out is not None:
        rows.append(["held-out pair accuracy", "", held_out["eval_rewards/accuracies"]])
    rows.append(["judge win / tie / loss", "", f"{report['win_rate']:.0%} / {report['tie_rate']:.0%} / {report['loss_rate']:.0%}"])
    ui.print_table(f"aligned vs reference on {len(ids)} evaluation images", ["metric", "reference", "aligned"], rows)
    return report
