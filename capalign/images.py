"""Reading the images a user points `capalign caption` at."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from capalign.data.importers.images import BadImage, decode_image
from capalign.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def open_rgb(path: Path) -> Image.Image:
    """Decode an image at full size exactly as imports do (EXIF upright, any mode to RGB, bombs
    refused); raises ValueError when it is not a usable image."""
    try:
        return decode_image(Path(path), size=0)
    except BadImage as exc:
        raise ValueError(f"{path} is not a readable image ({exc.reason})") from None


def collect_images(inputs: list[Path]) -> tuple[list[Path], list[Image.Image], list[str]]:
    """Files named directly must be images (else UserError); files found in folders that fail to
    decode are skipped and reported. Returns (paths, images, skipped messages)."""
    paths, images, skipped = [], [], []
    for given in inputs:
        if not given.exists():
            raise UserError(f"{given} does not exist.")
        if given.is_dir():
            for path in sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
                try:
                    images.append(open_rgb(path))
                    paths.append(path)
                except ValueError as exc:
                    skipped.append(str(exc))
        else:
            try:
                images.append(open_rgb(given))
            except ValueError as exc:
                raise UserError(f"{exc}; pass image files (JPEG, PNG, ...) or folders of them.") from None
            paths.append(given)
    if not images:
        raise UserError("No images found in " + ", ".join(map(str, inputs)) + ".")
    return paths, images, skipped
