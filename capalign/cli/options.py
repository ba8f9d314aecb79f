"""Options several commands share, each help text written once. Options that set a config field, and
the decoding options (`DECODING`, from capalign.decoding.Decoding), are generated from dataclass fields
(capalign.cli.flags)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from capalign.cli.flags import flags_of
from capalign.config import CLIP_B32, RunConfig, load_config
from capalign.decoding import Decoding
from capalign.errors import OutputError
from capalign.runs import CONFIG_NAME

DATA = typer.Option(None, "--data", help="Prepared dataset folder or source name (default: shapes).")
SPLIT = typer.Option("test", "--split", help="Split whose references the captions are scored against.")
CLIP_MODEL = typer.Option(CLIP_B32, "--clip-model", help="CLIPModel name or path for CLIPScore; 'self' or a run folder uses a capalign contrastive head.")
BERTSCORE_MODEL = typer.Option(None, "--bertscore-model", help="Model name or local path (default roberta-large, layer 17, rescaled).")
BERTSCORE_LAYER = typer.Option(None, "--bertscore-layer", help="Layer for --bertscore-model (required with a local path).")
INSTANCES = typer.Option(None, "--instances", help="COCO instances_*.json for CHAIR.")
BATCH_SIZE = typer.Option(64, "--batch-size", help="Images per batch.")
DEVICE = typer.Option(None, "--device", help="auto (default: the accelerator when present) | cpu | cuda | cuda:N | mps: where the models run.")
DTYPE = typer.Option("auto", "--dtype", help="auto (the run's training precision on an accelerator, else float32) | float32 | bfloat16 | float16.")
LIMIT = typer.Option(None, "--limit", help="Only the first N images of the split.")
CONFIG = typer.Option(None, "--config", help="YAML config file; flags override it.")
RESUME = typer.Option(False, "--resume", help="Continue from the last intact checkpoint in --out.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace what --out / --output already holds (a finished run, a results file).")


DECODING = [flags_of(Decoding, "decoding")]


def decoding(given: dict) -> dict:
    """The decoding options a command received (its `**given`) as keyword arguments of DecodeOptions,
    capalign.Captioner.caption and capalign.evaluate."""
    return {f.name: given[f.name] for f in dataclasses.fields(Decoding)}


def resolved_config(run_dir: Path | None, resumed: Path | None = None) -> RunConfig | None:
    """The saved, fully resolved config a stage starts from: the interrupted run's own (`resumed`)
    when it has one, else the earlier run's (`run_dir`); None when neither has one."""
    for folder in (resumed, run_dir):
        if folder is not None and (Path(folder) / CONFIG_NAME).is_file():
            return load_config(Path(folder) / CONFIG_NAME)
    return None


def refuse_overwrite(path: Path | None, overwrite: bool) -> None:
    """An existing --output file is kept unless --overwrite; a folder (or a path below a file) is
    never an --output."""
    if path is None:
        return
    existing = next(p for p in (Path(path), *Path(path).parents) if p.exists() or p == p.parent)
    if Path(path).is_dir():
        raise OutputError(f"{path} is a folder; --output takes a file name (choose one inside it, or elsewhere).")
    if existing != Path(path) and existing.exists() and not existing.is_dir():
        raise OutputError(f"{existing} is a file, so {path} cannot be written; choose another --output.")
    if Path(path).exists() and not overwrite:
        raise OutputError(f"{path} exists; choose another --output or pass --overwrite to replace it.")
