"""Safe image opening and normalisation: one decode at import time, RGB, EXIF-upright, resized; and
reading the images a user points `capalign caption` at.

Every failure becomes a `BadImage` carrying a skip reason from `fetch_report`, never an exception that
stops the import.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from capalign.data.importers import fetch_report as R
from capalign.errors import InputError, MissingError
from capalign.usertext import is_text, printable

JPEG_QUALITY = 95  # stored images are re-encoded once as JPEG at this quality


class BadImage(Exception):
    """An image record that cannot be used; `reason` is one of the fetch_report.* skip reasons."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def resolve_inside(root: Path, rel: str) -> Path:
    """Resolve `rel` under `root`, refusing names that are not text or hold a NUL byte, absolute
    paths, `..` parts and symlinks that leave root."""
    if not is_text(rel) or "\0" in rel:  # the OS cannot even look such a name up
        raise BadImage(R.BAD_NAME, f"{printable(rel)!r} holds a NUL byte or text that is not UTF-8")
    rel = rel.replace("\\", "/")
    if not rel or os.path.isabs(rel) or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise BadImage(R.PATH_ESCAPE, f"absolute or empty path {rel!r}")
    if ".." in Path(rel).parts:
        raise BadImage(R.PATH_ESCAPE, f"'..' in {rel!r}")
    base = root.resolve()
    try:
        target = (base / rel).resolve()
        if not target.is_relative_to(base):
            raise BadImage(R.PATH_ESCAPE, f"{rel!r} resolves to {target}, outside {base}")
        if not target.exists():
            raise BadImage(R.MISSING_FILE, str(target))
        if not target.is_file():
            raise BadImage(R.NOT_IMAGE, f"{target} is not a file")
        if target.stat().st_size == 0:
            raise BadImage(R.EMPTY_FILE, str(target))
    except OSError as e:  # a name too long, a folder we may not enter, a symlink loop
        raise BadImage(R.BAD_NAME, f"{rel!r}: {e.strerror or e}") from None
    return target


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (1, L, P, RGBA, LA, CMYK, I;16, I, F, ...) to 8-bit RGB on white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        if img.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        elif a.size and a.max() > 255:  # 16-bit range
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _resize(img: Image.Image, size: int) -> Image.Image:
    """Shrink so the shorter side is `size` (aspect kept); never enlarge; size <= 0 keeps it."""
    w, h = img.size
    if size <= 0 or min(w, h) <= size:
        return img
    scale = size / min(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def normalize_image(source: bytes | Path, size: int) -> bytes:
    """`decode_image`, re-encoded once as JPEG bytes for storage."""
    buf = io.BytesIO()
    decode_image(source, size).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def decode_image(source: bytes | Path, size: int) -> Image.Image:
    """Decode `source` once, apply EXIF orientation, convert to RGB and resize (size <= 0 keeps it).

    Raises BadImage for empty, non-image, truncated/corrupt and decompression-bomb inputs (an image
    with more than PIL's `Image.MAX_IMAGE_PIXELS` pixels is refused from its header, never decoded).
    """
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise BadImage(R.EMPTY_FILE, "0 bytes")
        fp = io.BytesIO(source)
    else:
        try:
            if Path(source).stat().st_size == 0:
                raise BadImage(R.EMPTY_FILE, str(source))
            fp = open(source, "rb")
        except OSError as e:  # no permission, vanished since it was listed
            raise BadImage(R.UNREADABLE, f"{source}: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(fp)
            except Image.DecompressionBombError as e:
                raise BadImage(R.BOMB, str(e)) from None
            except UnidentifiedImageError as e:  # for bytes Pillow names a BytesIO's address, new every run
                detail = f"cannot identify image file ({len(source)} bytes)" if isinstance(fp, io.BytesIO) else str(e)
                raise BadImage(R.NOT_IMAGE, detail) from None
            except (OSError, SyntaxError, ValueError) as e:
                raise BadImage(R.TRUNCATED, str(e)) from None
            limit = Image.MAX_IMAGE_PIXELS
            w, h = img.size
            if limit and w * h > limit:
                raise BadImage(R.BOMB, f"{w}x{h} = {w * h} pixels > limit {limit}")
            if size > 0 and img.format == "JPEG" and min(w, h) > size:
                # decode JPEGs at reduced scale directly (less memory and time)
                img.draft(None, (max(size, round(w * size / min(w, h))), max(size, round(h * size / min(w, h)))))
            try:
                img.load()
                img = ImageOps.exif_transpose(img)
            except Image.DecompressionBombError as e:
                raise BadImage(R.BOMB, str(e)) from None
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise BadImage(R.TRUNCATED, str(e)) from None
        return _resize(_to_rgb(img), size)
    finally:
        fp.close()


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def open_rgb(path: Path) -> Image.Image:
    """Decode an image at full size exactly as imports do (EXIF upright, any mode to RGB, bombs
    refused); raises ValueError when it is not a usable image."""
    try:
        return decode_image(Path(path), size=0)
    except BadImage as exc:
        raise ValueError(f"{path} is not a readable image ({exc.reason})") from None


def probe_image(path: Path) -> None:
    """Read only an image's header (no pixels): raises ValueError, worded as open_rgb's, when the file
    is empty, not an image, unreadable or a decompression bomb by its size. A file that passes may
    still turn out truncated when decoded."""
    def refuse(reason: str) -> ValueError:
        return ValueError(f"{path} is not a readable image ({reason})")

    try:
        empty = Path(path).stat().st_size == 0
    except OSError:  # no permission, vanished since it was listed
        raise refuse(R.UNREADABLE) from None
    if empty:
        raise refuse(R.EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
    except Image.DecompressionBombError:
        raise refuse(R.BOMB) from None
    except UnidentifiedImageError:
        raise refuse(R.NOT_IMAGE) from None
    except PermissionError:
        raise refuse(R.UNREADABLE) from None
    except (OSError, SyntaxError, ValueError):
        raise refuse(R.TRUNCATED) from None
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        raise refuse(R.BOMB)


@dataclass(frozen=True)
class Unreadable:
    """An image file that failed to decode when its batch was read; `message` says which and why."""

    path: Path
    message: str


class ImageFiles(Sequence):
    """Image files decoded only when indexed or sliced (so a batch at a time, never all at once):
    each item is an RGB image (open_rgb), or an Unreadable in place of a file that fails."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._open(p) for p in self.paths[index]]
        return self._open(self.paths[index])

    @staticmethod
    def _open(path: Path) -> Image.Image | Unreadable:
        try:
            return open_rgb(path)
        except ValueError as exc:
            return Unreadable(path, str(exc))


def collect_images(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """The image files of `inputs`, checked by their headers only (nothing is decoded here; read
    them a batch at a time through ImageFiles): files named directly must be images (else
    InputError); files found in folders that are not are skipped. Returns (paths, skipped messages)."""
    paths, skipped = [], []
    for given in inputs:
        if not given.exists():
            raise MissingError(f"{given} does not exist.")
        if given.is_dir():
            for path in sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
                try:
                    probe_image(path)
                    paths.append(path)
                except ValueError as exc:
                    skipped.append(str(exc))
        else:
            try:
                probe_image(given)
            except ValueError as exc:
                raise InputError(f"{exc}; pass image files (JPEG, PNG, ...) or folders of them.") from None
            paths.append(given)
    if not paths:
        raise InputError("No images found in " + ", ".join(map(str, inputs)) + ".")
    return paths, skipped
