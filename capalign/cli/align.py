"""`capalign align`: stage 2, DPO-family preference optimisation of caption generation, or
self-critical sequence training (`--method scst`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from capalign.cli import ui
from capalign.cli import flags, options
from capalign.config import METHOD_DEFAULTS, AlignConfig, TrainConfig, build_config
from capalign.errors import ConfigError
from capalign.runs import RUNS_ROOT, resolve_model, write_errors
from capalign.schema import describe

# Every setting stage 2 uses has its flag: the align section, and the engine settings of the train
# section it trains with (by default as the pretrained run had them).
FLAGS = [flags.flags_of(AlignConfig, "align"), flags.flags_of(TrainConfig, "train", only=lambda f: f.metadata["engine"])]


def _shown(value) -> str:
    """A default as help writes it: 5e-4 rather than 0.0005, 2 rather than 2.0."""
    if not isinstance(value, float):
        return str(value)
    mantissa, exponent = f"{value:e}".split("e")
    return min(f"{value:g}", f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}", key=len)


def _method_help(f: dataclasses.Field) -> str:
    """A setting's help with the default each method has of its own (config.METHOD_DEFAULTS)."""
    return describe(f) + "".join(f" Default with --method {method} ({preset} preset): {_shown(defaults[f.name])}."
                                 for method, presets in METHOD_DEFAULTS.items()
                                 for preset, defaults in presets.items() if f.name in defaults)


METHOD_HELPS = {f.name: _method_help(f) for f in dataclasses.fields(AlignConfig)
                if any(f.name in d for presets in METHOD_DEFAULTS.values() for d in presets.values())}


@flags.with_flags(*FLAGS, help_suffix={"train": " Default: as the pretrained run."}, helps=METHOD_HELPS)
def align(
    model: Optional[str] = typer.Option(None, help="Pretrained run folder (default: the latest pretrain run)."),
    data: Optional[str] = typer.Option(None, help="Dataset (default: the one the model was trained on)."),
    config: Optional[Path] = options.CONFIG,
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/align-<time>)."),
    resume: bool = options.RESUME,
    overwrite: bool = options.OVERWRITE,
    **given,
) -> None:
    """Stage 2: DPO-family preference optimisation of caption generation (default), or self-critical
    sequence training with --method scst (sampled captions scored by --reward against --baseline).

    Starts from the pretrained run's resolved configuration (its preset's alignment settings, mixed
    precision, gradient accumulation, seed); --config and the options override it. With --method
    scst on the tiny preset, --lr, --batch-size, --max-steps and --contrastive-weight default to
    SCST's own unless set."""
    if resume and out is None:
        raise ConfigError("--resume needs --out pointing at the interrupted run folder.")
    overrides, names = flags.overrides(FLAGS, given), flags.names(FLAGS)
    build_config(config_file=config, overrides=overrides, flags=names)  # a bad option is reported before a missing model
    from capalign.train.align import align as run_align  # deferred: imports torch and transformers

    model_dir = resolve_model(model, kind="pretrain")
    run_config = build_config(config_file=config, overrides=overrides, flags=names,
                              base=options.resolved_config(model_dir, out if resume else None))
    with write_errors(out or RUNS_ROOT):  # disk full, read-only, no permission: one line
        run_dir = run_align(model_dir, run_config, data=data, out=out, resume=resume, overwrite=overwrite)
    ui.console.print(f"[green]Aligned model written to {run_dir}")
