"""`capalign fetch`: prepare a dataset into the one on-disk format, or cache a model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from capalign import ui
from capalign.errors import UserError
from capalign.outputs import claim_output_dir

SHAPES_IMAGE_SIZE = 64
IMPORT_IMAGE_SIZE = 256


def fetch(
    source: str = typer.Argument("shapes", help="shapes | flickr8k | flickr30k | coco | cc3m | cifar100-pairs | ultrafeedback | HF dataset id | local path"),
    out: Optional[Path] = typer.Option(None, help="Where to write the prepared dataset (default data/<source>): a new or empty folder, or one holding a dataset capalign prepared (replaced once the new one is complete)."),
    limit: Optional[int] = typer.Option(None, help="Number of images to keep."),
    seed: int = typer.Option(0, help="Seed for generation and splits."),
    images: Optional[Path] = typer.Option(None, help="Folder holding the images of a local annotation file."),
    image_size: Optional[int] = typer.Option(None, help=f"Shorter side of stored images (default {IMPORT_IMAGE_SIZE}, never enlarged, 0 = keep; shapes: the image size, default {SHAPES_IMAGE_SIZE})."),
    image_column: Optional[str] = typer.Option(None, help="Image column of a Hugging Face dataset."),
    caption_column: Optional[str] = typer.Option(None, help="Caption column of a Hugging Face dataset."),
    model: Optional[str] = typer.Option(None, help="Cache this model (name or path) for offline use instead."),
) -> None:
    """Prepare a dataset into capalign's on-disk format (or cache a model with --model)."""
    from capalign.data import store  # deferred: imports datasets

    if model is not None:
        from capalign.hub import fetch_model  # deferred: imports huggingface_hub

        ui.console.print(f"Model cached at {fetch_model(model)}")
        return
    if source == "shapes":
        if limit is not None and limit < 4:
            raise UserError(f"--limit must be at least 4 for shapes (one image per split), got {limit}.")
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
                           image_column=image_column, caption_column=caption_column)
    ui.console.print(report.summary())
