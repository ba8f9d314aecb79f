"""`capalign pretrain`: stage 1, captioning loss + image–text contrastive loss."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from capalign.cli import ui
from capalign.cli import flags, options
from capalign.config import ModelConfig, RunConfig, TrainConfig, build_config
from capalign.errors import ConfigError
from capalign.runs import RUNS_ROOT, resolve_model, write_errors

# Every setting stage 1 uses has its flag: the dataset, the model section and the train section.
FLAGS = [flags.flags_of(RunConfig, ""), flags.flags_of(ModelConfig, "model"), flags.flags_of(TrainConfig, "train")]


@flags.with_flags(*FLAGS)
def pretrain(
    config: Optional[Path] = options.CONFIG,
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/pretrain-<time>)."),
    resume: bool = options.RESUME,
    overwrite: bool = options.OVERWRITE,
    dry_run: bool = typer.Option(False, help="Build data, model and one batch; report sizes; do not train."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Fine-tune: start from this model's weights (a run folder, a transformers captioner folder or a Hub id) with a fresh schedule."),
    **given,
) -> None:
    """Stage 1: captioning loss + image–text contrastive loss."""
    if resume and out is None:
        raise ConfigError("--resume needs --out pointing at the interrupted run folder.")
    overrides = flags.overrides(FLAGS, given)
    preset = overrides.get("model", {}).pop("preset", None)  # a preset is a starting point, not one value
    base = options.resolved_config(None, out) if resume and preset is None else None  # resume: the run's own settings
    settings = build_config(preset, config, overrides, base=base, flags=flags.names(FLAGS))
    from capalign.train.pretrain import pretrain as run_pretrain  # deferred: imports torch and transformers

    start = resolve_model(init_from) if init_from is not None else None
    with write_errors(out or RUNS_ROOT):  # disk full, read-only, no permission: one line
        run_dir = run_pretrain(settings, out, resume=resume, dry_run=dry_run, overwrite=overwrite, init_from=start)
    if not dry_run:
        ui.console.print(f"[green]Pretrained model written to {run_dir}")
