"""`capalign pretrain`: stage 1, captioning loss + image–text contrastive loss."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from capalign.cli import ui
from capalign.cli import options
from capalign.config import PRESETS, build_config, help_for
from capalign.errors import ConfigError
from capalign.runs import RUNS_ROOT, resolve_model, write_errors


def pretrain(
    data: Optional[str] = typer.Option(None, help=help_for("data")),
    preset: Optional[str] = typer.Option(None, help=f"{help_for('model.preset')} One of: {', '.join(PRESETS)}."),
    config: Optional[Path] = options.CONFIG,
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/pretrain-<time>)."),
    epochs: Optional[int] = typer.Option(None, help=help_for("train.epochs")),
    max_steps: Optional[int] = typer.Option(None, help=help_for("train.max_steps")),
    batch_size: Optional[int] = typer.Option(None, help=help_for("train.batch_size")),
    lr: Optional[float] = typer.Option(None, help=help_for("train.lr")),
    seed: Optional[int] = typer.Option(None, help=help_for("train.seed")),
    mixed_precision: Optional[str] = typer.Option(None, help=help_for("train.mixed_precision")),
    grad_accum: Optional[int] = typer.Option(None, help=help_for("train.grad_accum")),
    vision: Optional[str] = typer.Option(None, help=help_for("model.vision")),
    decoder: Optional[str] = typer.Option(None, help=help_for("model.decoder")),
    text_encoder: Optional[str] = typer.Option(None, help=help_for("model.text_encoder")),
    arch: Optional[str] = typer.Option(None, help=help_for("model.arch")),
    freeze_vision: Optional[bool] = typer.Option(None, "--freeze-vision/--no-freeze-vision", help=help_for("model.freeze_vision")),
    freeze_decoder: Optional[bool] = typer.Option(None, "--freeze-decoder/--no-freeze-decoder", help=help_for("model.freeze_decoder")),
    select: Optional[str] = typer.Option(None, help=help_for("train.select")),
    patience: Optional[int] = typer.Option(None, help=help_for("train.patience")),
    tracker: Optional[str] = typer.Option(None, help=help_for("train.tracker")),
    device: Optional[str] = typer.Option(None, help=help_for("train.device")),
    cache_dir: Optional[str] = typer.Option(None, help=help_for("train.cache_dir")),
    resume: bool = options.RESUME,
    overwrite: bool = options.OVERWRITE,
    dry_run: bool = typer.Option(False, help="Build data, model and one batch; report sizes; do not train."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Fine-tune: start from this model's weights (a run folder, a transformers captioner folder or a Hub id) with a fresh schedule."),
) -> None:
    """Stage 1: captioning loss + image–text contrastive loss."""
    from capalign.train.pretrain import pretrain as run_pretrain  # deferred: imports torch and transformers

    if resume and out is None:
        raise ConfigError("--resume needs --out pointing at the interrupted run folder.")
    overrides = options.overrides(
        train=dict(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
                   mixed_precision=mixed_precision, grad_accum=grad_accum, select=select, patience=patience, tracker=tracker,
                   device=device, cache_dir=cache_dir),
        model=dict(vision=vision, decoder=decoder, text_encoder=text_encoder, arch=arch,
                   freeze_vision=freeze_vision, freeze_decoder=freeze_decoder))
    if data is not None:
        overrides["data"] = data
    base = options.resolved_config(None, out) if resume and preset is None else None  # resume: the run's own settings
    settings = build_config(preset, config, overrides, base=base)
    start = resolve_model(init_from) if init_from is not None else None
    with write_errors(out or RUNS_ROOT):  # disk full, read-only, no permission: one line
        run_dir = run_pretrain(settings, out, resume=resume, dry_run=dry_run, overwrite=overwrite, init_from=start)
    if not dry_run:
        ui.console.print(f"[green]Pretrained model written to {run_dir}")
