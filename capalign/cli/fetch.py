"""`capalign fetch`: prepare a dataset into the one on-disk format, or cache a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from capalign.cli import ui
from capalign.config import CLIP_B32
from capalign.errors import ConfigError, InputError
from capalign.outputs import claim_output_dir

SHAPES_IMAGE_SIZE = 64
IMPORT_IMAGE_SIZE = 256
IMAGE_SIZE_RANGE = (16, 4096)  # smaller shows nothing; larger than any captioner's input by far
DEFAULT_PROCESSES = 4  # at most; fewer on a machine with fewer CPUs


def default_processes() -> int:
    """min(4, the CPUs this process may run on)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(DEFAULT_PROCESSES, cpus or 1)


def _check_image_size(size: int | None, shapes: bool) -> None:
    """Refuse a --image-size outside the range (imports also take 0 = keep), before any work."""
    low, high = IMAGE_SIZE_RANGE
    if size is None or low <= size <= high or (size == 0 and not shapes):
        return
    allowed = f"{low} to {high}" if shapes else f"0 (keep the size) or {low} to {high}"
    raise ConfigError(f"--image-size {size} is out of range; {'shapes takes' if shapes else 'use'} {allowed}.")


def fetch(
    source: str = typer.Argument("shapes", help="shapes | flickr8k | flickr30k | coco | cc3m | cifar100-pairs | ultrafeedback | HF dataset id | local path"),
    out: Optional[Path] = typer.Option(None, help="Where to write the prepared dataset (default data/<source>): a new or empty folder, or one holding a dataset capalign prepared (replaced once the new one is complete)."),
    limit: Optional[int] = typer.Option(None, help="Number of images to keep."),
    seed: int = typer.Option(0, help="Seed for generation and splits."),
    images: Optional[Path] = typer.Option(None, help="Folder holding the images of a local annotation file."),
    image_size: Optional[int] = typer.Option(None, help=f"Shorter side of stored images (default {IMPORT_IMAGE_SIZE}, never enlarged, 0 = keep; shapes: the image size, default {SHAPES_IMAGE_SIZE})."),
    image_column: Optional[str] = typer.Option(None, help="Image column of a Hugging Face dataset."),
    caption_column: Optional[str] = typer.Option(None, help="Caption column of a Hugging Face dataset."),
    model: Optional[str] = typer.Option(None, help="Cache this model (name or path) for offline use instead; a ClipCap checkpoint file (.pt) with --out: convert it into a run folder."),
    vision: str = typer.Option(CLIP_B32, help="ClipCap checkpoint: the CLIP it was trained with."),
    decoder: str = typer.Option("gpt2", help="ClipCap checkpoint: the GPT-2 it was trained with."),
    normalize_prefix: Optional[bool] = typer.Option(None, "--normalize-prefix/--no-normalize-prefix", help="ClipCap checkpoint: L2-normalise the CLIP embedding (default: as ClipCap's inference code, on for the transformer mapper, off for MLP)."),
    processes: Optional[int] = typer.Option(None, min=1, help=f"Processes that decode and resize an import's images (default: min({DEFAULT_PROCESSES}, CPUs); 1 = this one; the same dataset either way)."),
    keep_downloads: bool = typer.Option(False, help="Keep the downloaded images (OUT.downloads/ beside --out) after a URL source is fetched; by default they are deleted once the dataset is complete."),
) -> None:
    """Prepare a dataset into capalign's on-disk format (or cache a model with --model)."""
    _check_image_size(image_size, source == "shapes")
    from capalign.data import store  # deferred: imports datasets

    if model is not None and Path(model).expanduser().is_file():
        from capalign.models.clipcap_run import convert_clipcap, is_checkpoint_file  # deferred: imports torch and transformers

        if not is_checkpoint_file(model):
            raise InputError(f"{model} is a file but not a checkpoint (.pt, .pth, .bin, .ckpt, .safetensors); pass a model name or folder.")
        if out is None:
            raise ConfigError(f"converting the ClipCap checkpoint {model} needs --out DIR (the run folder to write).")
        convert_clipcap(Path(model).expanduser(), out, vision, decoder, normalize_prefix)
        return
    if model is not None:
        from capalign.hub import fetch_model  # deferred: imports huggingface_hub

        ui.console.print(f"Model cached at {fetch_model(model)}")
        return
    if source == "shapes":
        if limit is not None and limit < 4:
            raise ConfigError(f"--limit must be at least 4 for shapes (one image per split), got {limit}.")
        target = out or store.DEFAULT_DATA_ROOT / "shapes"
        size = SHAPES_IMAGE_SIZE if image_size is None else image_size
        dataset = store.prepare_shapes(target, limit=limit or store.SHAPES_DEFAULT_LIMIT, seed=seed, image_size=size,
                                       option="--out")
        ui.print_table(f"shapes → {target}", ["split", "images", "captions"],
                       [[name, len(split), sum(map(len, split["captions"]))] for name, split in dataset.items()])
        return
    from capalign.data.importers import import_source  # deferred: imports datasets

    target = out or store.DEFAULT_DATA_ROOT / Path(source).name.replace("/", "_")
    claim_output_dir(target, "dataset", overwrite=True)  # refused before any download or import work
    report = import_source(source, target, images=images, limit=limit, seed=seed,
                           image_size=IMPORT_IMAGE_SIZE if image_size is None else image_size,
                           image_column=image_column, caption_column=caption_column,
                           processes=default_processes() if processes is None else processes,
                           keep_downloads=keep_downloads)
    ui.console.print(report.summary())
