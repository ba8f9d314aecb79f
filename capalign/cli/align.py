"""`capalign align`: stage 2, DPO-family preference optimisation of caption generation, or
self-critical sequence training (`--method scst`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from capalign.cli import ui
from capalign.cli import options
from capalign.config import build_config, help_for
from capalign.errors import ConfigError
from capalign.runs import RUNS_ROOT, resolve_model, write_errors


def align(
    model: Optional[str] = typer.Option(None, help="Pretrained run folder (default: the latest pretrain run)."),
    data: Optional[str] = typer.Option(None, help="Dataset (default: the one the model was trained on)."),
    method: Optional[str] = typer.Option(None, help=help_for("align.method")),
    pairs: Optional[str] = typer.Option(None, help=help_for("align.pairs")),
    beta: Optional[float] = typer.Option(None, help=help_for("align.beta")),
    loss: Optional[str] = typer.Option(None, help=help_for("align.loss")),
    label_smoothing: Optional[float] = typer.Option(None, help=help_for("align.label_smoothing")),
    sft_weight: Optional[float] = typer.Option(None, help=help_for("align.sft_weight")),
    reward: Optional[str] = typer.Option(None, help=help_for("align.reward")),
    baseline: Optional[str] = typer.Option(None, help=help_for("align.baseline")),
    num_samples: Optional[int] = typer.Option(None, help=help_for("align.num_samples")),
    candidate_temperature: Optional[float] = typer.Option(None, help=help_for("align.candidate_temperature")),
    candidate_top_k: Optional[int] = typer.Option(None, help=help_for("align.candidate_top_k")),
    candidate_top_p: Optional[float] = typer.Option(None, help=help_for("align.candidate_top_p")),
    lora_rank: Optional[int] = typer.Option(None, help=help_for("align.lora_rank")),
    rounds: Optional[int] = typer.Option(None, help=help_for("align.rounds")),
    lr: Optional[float] = typer.Option(None, help=help_for("align.lr")),
    epochs: Optional[int] = typer.Option(None, help=help_for("align.epochs")),
    max_steps: Optional[int] = typer.Option(None, help=help_for("align.max_steps")),
    batch_size: Optional[int] = typer.Option(None, help=help_for("align.batch_size")),
    disable_dropout: Optional[bool] = typer.Option(None, "--disable-dropout/--keep-dropout", help=help_for("align.disable_dropout")),
    mixed_precision: Optional[str] = typer.Option(None, help=help_for("train.mixed_precision") + " (default: as the pretrained run)."),
    grad_accum: Optional[int] = typer.Option(None, help=help_for("train.grad_accum") + " (default: as the pretrained run)."),
    config: Optional[Path] = options.CONFIG,
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/align-<time>)."),
    device: Optional[str] = typer.Option(None, help=help_for("train.device")),
    resume: bool = options.RESUME,
    overwrite: bool = options.OVERWRITE,
) -> None:
    """Stage 2: DPO-family preference optimisation of caption generation (default), or self-critical
    sequence training with --method scst (sampled captions scored by --reward against --baseline).

    Starts from the pretrained run's resolved configuration (its preset's alignment settings, mixed
    precision, gradient accumulation, seed); --config and the options override it."""
    from capalign.train.align import align as run_align  # deferred: imports torch and transformers

    if resume and out is None:
        raise ConfigError("--resume needs --out pointing at the interrupted run folder.")
    overrides = options.overrides(
        align=dict(method=method, reward=reward, baseline=baseline, num_samples=num_samples,
                   candidate_temperature=candidate_temperature, candidate_top_k=candidate_top_k,
                   candidate_top_p=candidate_top_p, pairs=pairs, beta=beta,
                   loss=loss, label_smoothing=label_smoothing, sft_weight=sft_weight, lora_rank=lora_rank, rounds=rounds,
                   lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size, disable_dropout=disable_dropout),
        train=dict(mixed_precision=mixed_precision, grad_accum=grad_accum, device=device))
    build_config(config_file=config, overrides=overrides)  # a bad option is reported before a missing model
    model_dir = resolve_model(model, kind="pretrain")
    run_config = build_config(config_file=config, overrides=overrides, base=options.resolved_config(model_dir, out if resume else None))
    with write_errors(out or RUNS_ROOT):  # disk full, read-only, no permission: one line
        run_dir = run_align(model_dir, run_config, data=data, out=out, resume=resume, overwrite=overwrite)
    ui.console.print(f"[green]Aligned model written to {run_dir}")
