"""Shared helpers for the importer tests (tiny real images made with PIL), plus image tests."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from datasets import Image as ImageFeature, List, Value, load_from_disk
from PIL import Image

from capalign.data import images as I
from capalign.data.importers import fetch_report as R


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def rgb(path: Path, size=(20, 20), color=(200, 30, 30)) -> Path:
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    return save(Image.new("RGB", size, color), path, format=fmt)


def noise_jpeg_bytes(size=(20, 20), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


BAD_FILES = {  # file name -> skip reason
    "empty.jpg": R.EMPTY_FILE,
    "truncated.jpg": R.TRUNCATED,
    "text.jpg": R.NOT_IMAGE,
    "bomb.png": R.BOMB,       # 40x40 = 1600 px > the 1000 px limit set by `low_pixel_limit`
    "bigbomb.png": R.BOMB,    # 100x100 > 2x the limit: PIL itself raises DecompressionBombError
}


def make_bad_files(folder: Path) -> None:
    """Every kind of bad image file, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    data = noise_jpeg_bytes((20, 20))
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not an image\n")
    rgb(folder / "bomb.png", (40, 40))
    rgb(folder / "bigbomb.png", (100, 100))


def make_escapes(folder: Path, outside: Path) -> dict[str, str]:
    """A file outside `folder` and three ways to point at it; returns name -> reference used."""
    target = rgb(outside / "outside.jpg")
    os.symlink(target, folder / "link.jpg")
    return {"dotdot": f"../{outside.name}/outside.jpg", "absolute": str(target), "symlink": "link.jpg"}


@pytest.fixture
def low_pixel_limit(monkeypatch):
    """Decompression-bomb limit of 1000 pixels: 20x20 test images pass, 40x40 ones are bombs."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


def load(out: Path):
    return load_from_disk(str(out))


def check_schema(dd) -> None:
    assert set(dd) == {"train", "validation", "test"}
    for split in dd.values():
        assert isinstance(split.features["image_id"], Value) and split.features["image_id"].dtype == "string"
        assert isinstance(split.features["image"], ImageFeature)
        assert isinstance(split.features["captions"], List)
        assert split.features["captions"].feature.dtype == "string"


def all_rows(dd) -> dict[str, dict]:
    return {r["image_id"]: r for split in dd.values() for r in split}


def report_json(out: Path) -> dict:
    return json.loads((out / "fetch_report.json").read_text())


# ---------------------------------------------------------------- image normalisation


def norm(img: Image.Image, fmt="PNG", size=256, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    out = Image.open(io.BytesIO(I.normalize_image(buf.getvalue(), size)))
    out.load()
    return out


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (32, 16), (255, 0, 0, 0))  # transparent red ...
    img.paste((0, 0, 255, 255), (0, 0, 16, 16))        # ... with an opaque blue left half
    out = norm(img)
    assert out.mode == "RGB"
    assert all(abs(a - b) <= 3 for a, b in zip(out.getpixel((28, 8)), (255, 255, 255)))
    assert out.getpixel((4, 8))[2] > 240 and out.getpixel((4, 8))[0] < 15


def test_palette_with_transparency_and_la_and_1bit():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 1
    assert norm(p).getpixel((1, 1))[0] > 250  # transparent palette entry -> white
    assert norm(Image.new("LA", (4, 4), (0, 255))).getpixel((0, 0))[0] < 5
    assert norm(Image.new("1", (4, 4), 1)).mode == "RGB"


def test_sixteen_bit_grey_scaled_to_eight_bit():
    arr = np.array([[65535, 0], [32896, 257]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(norm(img).convert("L"))
    assert abs(int(out[0, 0]) - 255) <= 2 and int(out[0, 1]) <= 2 and abs(int(out[1, 0]) - 128) <= 3


def test_cmyk_jpeg_becomes_rgb():
    out = norm(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), fmt="JPEG")
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_exif_orientation_applied():
    img = Image.new("RGB", (20, 10), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    assert norm(img, fmt="JPEG", exif=exif.tobytes()).size == (10, 20)


def test_resize_shorter_side_never_enlarge():
    assert norm(Image.new("RGB", (300, 200)), size=100).size == (150, 100)
    assert norm(Image.new("RGB", (30, 20)), size=100).size == (30, 20)
    assert norm(Image.new("RGB", (300, 200)), size=0).size == (300, 200)


def test_large_jpeg_draft_decode_is_resized():
    data = noise_jpeg_bytes((800, 600))
    out = Image.open(io.BytesIO(I.normalize_image(data, 64)))
    assert out.size == (85, 64)


def test_bad_inputs_raise_bad_image(tmp_path, low_pixel_limit):
    make_bad_files(tmp_path)
    for name, reason in BAD_FILES.items():
        with pytest.raises(I.BadImage) as e:
            I.normalize_image(tmp_path / name, 256)
        assert e.value.reason == reason, name
    with pytest.raises(I.BadImage) as e:
        I.normalize_image(b"", 256)
    assert e.value.reason == R.EMPTY_FILE


def test_resolve_inside_refuses_escapes(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    refs = make_escapes(root, tmp_path / "elsewhere")
    for ref in refs.values():
        with pytest.raises(I.BadImage) as e:
            I.resolve_inside(root, ref)
        assert e.value.reason == R.PATH_ESCAPE, ref
    rgb(root / "sub" / "ok.jpg")
    os.symlink(root / "sub" / "ok.jpg", root / "inner_link.jpg")
    assert I.resolve_inside(root, "inner_link.jpg") == (root / "sub" / "ok.jpg").resolve()
    with pytest.raises(I.BadImage) as e:
        I.resolve_inside(root, "nope.jpg")
    assert e.value.reason == R.MISSING_FILE
