"""`capalign evaluate`: score a model or a results file against a split's references."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from capalign.cli import options
from capalign.errors import UserError
from capalign.runs import atomic_write_json
from capalign.ui import console, print_missing, print_table


def evaluate(
    model: Optional[str] = typer.Option(None, "--model", help="Run folder (default: the latest run)."),
    results: Optional[Path] = typer.Option(None, "--results", help="COCO results file [{image_id, caption}] to score instead of a model."),
    data: Optional[str] = options.DATA,
    split: str = options.SPLIT,
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list or 'all' (bleu, meteor, rouge, cider, spice, bertscore, clipscore, refclipscore, retrieval, diversity, hallucination, chair)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write summary, per-image scores, scorers and captions as JSON."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Score the common ids when a results file does not cover the split exactly."),
    clip_model: str = options.CLIP_MODEL,
    bertscore_model: Optional[str] = options.BERTSCORE_MODEL,
    bertscore_layer: Optional[int] = options.BERTSCORE_LAYER,
    instances: Optional[Path] = options.INSTANCES,
    num_beams: int = options.NUM_BEAMS,
    max_length: Optional[int] = options.MAX_LENGTH,
    batch_size: int = options.BATCH_SIZE,
    device: Optional[str] = options.DEVICE,
    limit: Optional[int] = options.LIMIT,
) -> None:
    """Score a model or a results file against a split's references."""
    from capalign.evaluation.systems import (  # deferred: imports torch, transformers and datasets
        Scoring, load_instances, load_split, load_system, score_system)
    from capalign.metrics import parse_metrics  # deferred: imports torch and pycocoevalcap

    if model is not None and results is not None:
        raise UserError("give either --model or --results, not both")
    names = parse_metrics(metrics)
    the_split = load_split(data, split, limit, want_train="Copied" in names)
    system = load_system(model, results, the_split, allow_partial=allow_partial, num_beams=num_beams,
                         max_length=max_length, batch_size=batch_size)
    scoring = Scoring(clip_model, bertscore_model, bertscore_layer, batch_size, device, load_instances(instances))
    result = score_system(system, the_split, names, scoring)
    print_table(f"{system.label} on {data or 'shapes'}/{split} ({len(system.captions)} images)",
                ["metric", "value", "scorer"], [[m, v, result.scorers.get(m, "")] for m, v in result.summary.items()])
    print_missing(result.missing)
    if output is not None:
        payload = result.to_json()
        payload.update({
            "system": {"label": system.label, "run": str(system.run_dir) if system.run_dir else None,
                       "results_file": str(system.results_file) if system.results_file else None},
            "data": {"data": data or "shapes", "split": split, "images": len(system.captions)},
            "captions": system.captions,
        })
        if system.id_report is not None and not system.id_report.ok:
            payload["id_report"] = {"missing": system.id_report.missing, "extra": system.id_report.extra,
                                    "duplicated": system.id_report.duplicated}
        atomic_write_json(output, payload)
        console.print(f"wrote {output}")
