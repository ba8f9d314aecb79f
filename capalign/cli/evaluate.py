"""`capalign evaluate`: score a model or a results file against a split's references — a thin
wrapper over capalign.evaluate (capalign.api)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from capalign.cli import flags, options
from capalign.runs import atomic_write_json
from capalign.cli.ui import console, print_missing, print_table


@flags.with_flags(*options.DECODING, defaults=True, helps={"num_captions": "Decode N captions per image (see caption --num-captions) and score the first."})
def evaluate(
    model: Optional[str] = typer.Option(None, "--model", help="Run folder (default: the latest run)."),
    results: Optional[Path] = typer.Option(None, "--results", help="COCO results file [{image_id, caption}] to score instead of a model."),
    data: Optional[str] = options.DATA,
    split: str = options.SPLIT,
    references: Optional[Path] = typer.Option(None, "--references", help="Reference captions file instead of --data: COCO annotations (captions_val2014.json form) or {image_id: [captions]}; text metrics only."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list or 'all' (bleu, meteor, rouge, cider, spice, bertscore, clipscore, refclipscore, retrieval, diversity, hallucination, chair)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write summary, per-image scores, scorers and captions as JSON."),
    overwrite: bool = options.OVERWRITE,
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Score the common ids when a results file does not cover the split exactly."),
    clip_model: str = options.CLIP_MODEL,
    bertscore_model: Optional[str] = options.BERTSCORE_MODEL,
    bertscore_layer: Optional[int] = options.BERTSCORE_LAYER,
    instances: Optional[Path] = options.INSTANCES,
    batch_size: int = options.BATCH_SIZE,
    device: Optional[str] = options.DEVICE,
    dtype: str = options.DTYPE,
    limit: Optional[int] = options.LIMIT,
    **given,
) -> None:
    """Score a model or a results file against a split's references (or a references file)."""
    from capalign.api import evaluate as run_evaluation  # deferred: imports torch, transformers and datasets
    from capalign.distributed import process_state  # deferred: imports torch and accelerate

    options.refuse_overwrite(output, overwrite)
    evaluation = run_evaluation(
        model, results, data=data, split=split, references=references, metrics=metrics, allow_partial=allow_partial,
        clip_model=clip_model, bertscore_model=bertscore_model, bertscore_layer=bertscore_layer, instances=instances,
        batch_size=batch_size, device=device, dtype=dtype, limit=limit,
        **options.decoding(given))
    if not process_state().is_main_process:  # under torchrun / accelerate launch the main process reports
        return
    result = evaluation.result
    print_table(f"{evaluation.system.label} on {evaluation.data}/{evaluation.split} ({len(evaluation.system.captions)} images)",
                ["metric", "value", "scorer"], [[m, v, result.scorers.get(m, "")] for m, v in result.summary.items()])
    print_missing(result.missing)
    if output is not None:
        atomic_write_json(output, evaluation.to_json())
        console.print(f"wrote {output}")
