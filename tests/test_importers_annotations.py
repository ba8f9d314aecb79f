"""COCO captions json, Karpathy json and Flickr8k files: exact rows, captions and skips."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from capalign.data.importers import import_source
from capalign.data.importers import fetch_report as R
from capalign.errors import ConfigError, InputError, MissingError, OutputError
from test_importers_common import (BAD_FILES, all_rows, check_schema, load, low_pixel_limit,  # noqa: F401
                                   make_bad_files, make_escapes, report_json, rgb, save)


def _images_with_everything(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """images/ with 3 good files (JPEG, PNG, CMYK JPEG), every bad file kind and 3 escapes."""
    imgs = tmp_path / "images"
    rgb(imgs / "a.jpg")
    rgb(imgs / "b.png", color=(0, 0, 200))
    save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), imgs / "c.jpg", format="JPEG")
    make_bad_files(imgs)
    return imgs, make_escapes(imgs, tmp_path / "outside")


def test_coco_captions_json_exact_counts(tmp_path, low_pixel_limit):
    imgs, esc = _images_with_everything(tmp_path)
    names = ["a.jpg", "b.png", "c.jpg", *BAD_FILES, "missing.jpg", esc["dotdot"], esc["absolute"], esc["symlink"]]
    images = [{"id": i + 1, "file_name": n} for i, n in enumerate(names)]
    images.append({"id": 99, "file_name": "a.jpg"})  # an image id without captions
    anns = []
    for im in images[:-1]:
        anns += [{"image_id": im["id"], "caption": f"caption one of {im['id']}"},
                 {"image_id": im["id"], "caption": f"caption two of {im['id']}"}]
    anns.append({"image_id": 1, "caption": "   "})              # empty caption
    anns.append({"image_id": 555, "caption": "no such image"})  # caption for unknown image
    ann = tmp_path / "captions_val2014.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns}))

    rep = import_source(str(ann), tmp_path / "out", images=imgs)

    assert rep.format == "coco"
    assert sum(rep.rows.values()) == 3 and sum(rep.captions.values()) == 6
    assert rep.skipped == {
        R.EMPTY_FILE: 1, R.TRUNCATED: 1, R.NOT_IMAGE: 1, R.BOMB: 2, R.MISSING_FILE: 1, R.PATH_ESCAPE: 3,
        R.EMPTY_CAPTION: 1, R.NO_CAPTIONS: 1, R.UNKNOWN_IMAGE: 1}
    dd = load(tmp_path / "out")
    check_schema(dd)
    rows = all_rows(dd)
    assert set(rows) == {"1", "2", "3"}
    assert rows["1"]["captions"] == ["caption one of 1", "caption two of 1"]
    assert all(r["image"].mode == "RGB" and r["image"].size == (20, 20) for r in rows.values())
    assert rows["3"]["image"].getpixel((10, 10))[0] > 200  # CMYK red stays red
    doc = report_json(tmp_path / "out")
    assert doc["skipped"] == rep.skipped and len(doc["skipped_records"]) == 12
    assert {r["reason"] for r in doc["skipped_records"] if "missing.jpg" in r["record"]} == {R.MISSING_FILE}
    assert "path_escapes_images_dir: 3" in rep.summary()


def test_coco_limit_and_seed_are_deterministic(tmp_path):
    imgs = tmp_path / "images"
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(40)]
    for i in range(40):
        rgb(imgs / f"{i}.jpg")
    anns = [{"image_id": i, "caption": f"picture {i}"} for i in range(40)]
    ann = tmp_path / "c.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns}))
    r1 = import_source(str(ann), tmp_path / "o1", images=imgs, limit=20, seed=3)
    r2 = import_source(str(ann), tmp_path / "o2", images=imgs, limit=20, seed=3)
    assert r1.rows == r2.rows == {"train": 18, "validation": 1, "test": 1}
    assert [r["image_id"] for r in load(tmp_path / "o1")["train"]] == [r["image_id"] for r in load(tmp_path / "o2")["train"]]
    full = import_source(str(ann), tmp_path / "o3", images=imgs)
    assert full.rows == {"train": 36, "validation": 2, "test": 2}


@pytest.mark.parametrize("doc, where", [
    ('{"images": [{"id": 1}], "annotations": []}', "images[0]"),
    ('{"images": [], "annotations": [{"caption": "x"}]}', "annotations[0]"),
    ('{"images": [],\n "annotations": [,]}', "line 2"),
    ('{"something": 1}', "neither COCO"),
])
def test_malformed_coco_names_the_key_or_line(tmp_path, doc, where):
    ann = tmp_path / "bad.json"
    ann.write_text(doc)
    (tmp_path / "im").mkdir()
    with pytest.raises(InputError) as e:
        import_source(str(ann), tmp_path / "out", images=tmp_path / "im")
    assert str(ann) in str(e.value) and where in str(e.value)
    assert not (tmp_path / "out").exists()


def test_coco_without_images_dir_is_a_user_error(tmp_path):
    ann = tmp_path / "c.json"
    ann.write_text('{"images": [], "annotations": []}')
    with pytest.raises(ConfigError, match="--images"):
        import_source(str(ann), tmp_path / "out")


def _karpathy(tmp_path: Path, dataset: str) -> Path:
    imgs = tmp_path / "imgs"
    entries = []
    plan = [("train", 4), ("restval", 2), ("val", 2), ("test", 3)]
    k = 0
    for split, n in plan:
        for _ in range(n):
            name = f"{k:04d}.jpg"
            rgb(imgs / ("val2014" if dataset == "coco" else "") / name)
            e = {"filename": name, "imgid": k, "split": split,
                 "sentences": [{"raw": f"raw {k} a", "tokens": ["raw"]}, {"tokens": ["tok", str(k)]}]}
            if dataset == "coco":
                e.update(filepath="val2014", cocoid=1000 + k)
            entries.append(e)
            k += 1
    entries[0]["sentences"].append({"raw": ""})                    # empty caption
    entries[7]["filename"] = "gone.jpg"                            # missing file (a val image)
    entries.append({"filename": "x.jpg", "split": "test", "sentences": []})  # no captions
    p = tmp_path / f"dataset_{dataset}.json"
    p.write_text(json.dumps({"images": entries, "dataset": dataset}))
    return p


@pytest.mark.parametrize("dataset", ["flickr8k", "coco"])
def test_karpathy_json_uses_its_splits(tmp_path, dataset):
    p = _karpathy(tmp_path, dataset)
    rep = import_source(str(p), tmp_path / "out", images=tmp_path / "imgs")
    assert rep.format == "karpathy"
    assert rep.rows == {"train": 6, "validation": 1, "test": 3}
    assert rep.captions == {"train": 12, "validation": 2, "test": 6}
    assert rep.skipped == {R.EMPTY_CAPTION: 1, R.MISSING_FILE: 1, R.NO_CAPTIONS: 1}
    dd = load(tmp_path / "out")
    check_schema(dd)
    first = dd["train"][0]
    assert first["image_id"] == ("1000" if dataset == "coco" else "0000")
    assert first["captions"] == ["raw 0 a", "tok 0"]
    assert import_source(str(p), tmp_path / "out", images=tmp_path / "imgs", limit=2).rows == \
        {"train": 2, "validation": 1, "test": 2}  # limit caps each split; re-import replaces out


def test_karpathy_unknown_split_is_malformed(tmp_path):
    p = tmp_path / "dataset_flickr30k.json"
    p.write_text(json.dumps({"dataset": "flickr30k", "images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]},
        {"filename": "b.jpg", "split": "holdout", "sentences": [{"raw": "y"}]}]}))
    (tmp_path / "i").mkdir()
    with pytest.raises(InputError, match=r"images\[1\]\.split"):
        import_source(str(p), tmp_path / "out", images=tmp_path / "i")


def _flickr_images(folder: Path, n: int) -> list[str]:
    names = [f"{1000 + i}_abc.jpg" for i in range(n)]
    for name in names:
        rgb(folder / name)
    return names


def test_flickr8k_captions_txt(tmp_path):
    root = tmp_path / "flickr8k"
    names = _flickr_images(root / "Images", 6)
    (root / "Images" / names[5]).write_bytes(b"")  # empty file
    lines = ["image,caption"]
    for name in names:
        lines += [f"{name},A dog runs .", f'{name},"A dog, brown, runs ."']
    lines += [f"{names[0]},", "zzz.jpg,a picture of nothing"]  # empty caption; missing file
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    rep = import_source(str(root / "captions.txt"), tmp_path / "out")  # Images/ found beside it
    assert rep.format == "flickr8k"
    assert sum(rep.rows.values()) == 5 and sum(rep.captions.values()) == 10
    assert rep.skipped == {R.EMPTY_CAPTION: 1, R.EMPTY_FILE: 1, R.MISSING_FILE: 1}
    rows = all_rows(load(tmp_path / "out"))
    assert rows["1000_abc"]["captions"] == ["A dog runs .", "A dog, brown, runs ."]


def test_flickr8k_token_txt_with_official_split_lists(tmp_path):
    text = tmp_path / "Flickr8k_text"
    imgs = tmp_path / "Flicker8k_Dataset"
    names = _flickr_images(imgs, 8)
    lines = [f"{n}#{k}\tcaption {k} for {n}" for n in names for k in range(5)]
    lines.append(f"{names[0]}#5\t ")  # empty caption
    text.mkdir()
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:4] + ["nocaps.jpg"]) + "\n")
    (text / "Flickr_8k.devImages.txt").write_text(names[4] + "\n")
    (text / "Flickr_8k.testImages.txt").write_text("\n".join(names[5:7]) + "\n")  # names[7] in no list
    rep = import_source(str(text / "Flickr8k.token.txt"), tmp_path / "out", images=imgs)
    assert rep.rows == {"train": 4, "validation": 1, "test": 2}
    assert rep.captions == {"train": 20, "validation": 5, "test": 10}
    assert rep.skipped == {R.EMPTY_CAPTION: 1, R.NOT_IN_SPLIT: 1, R.NO_CAPTIONS: 1}
    assert sorted(load(tmp_path / "out")["test"]["image_id"]) == ["1005_abc", "1006_abc"]


def test_flickr_malformed_lines_name_the_line(tmp_path):
    (tmp_path / "Images").mkdir()
    tok = tmp_path / "Flickr8k.token.txt"
    tok.write_text("a.jpg#0\tfine\nb.jpg#0 no tab here\n")
    with pytest.raises(InputError, match="line 2"):
        import_source(str(tok), tmp_path / "out")
    cap = tmp_path / "captions.txt"
    cap.write_text("image,caption\na.jpg,ok\nlonely.jpg\n")
    with pytest.raises(InputError, match="line 3"):
        import_source(str(cap), tmp_path / "out")


def test_unknown_paths_and_formats_fail_fast(tmp_path):
    t = time.monotonic()
    with pytest.raises(MissingError, match="not an existing path"):
        import_source("no_such_thing_here", tmp_path / "out")
    odd = tmp_path / "notes.txt"
    odd.write_text("hello\n")
    with pytest.raises(InputError, match="cannot tell the format"):
        import_source(str(odd), tmp_path / "out")
    with pytest.raises(ConfigError, match="limit"):
        import_source(str(odd), tmp_path / "out", limit=0)
    assert time.monotonic() - t < 5


def test_out_that_is_not_a_prepared_dataset_is_not_overwritten(tmp_path):
    p = _karpathy(tmp_path, "flickr8k")
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(OutputError, match="not a prepared dataset"):
        import_source(str(p), out, images=tmp_path / "imgs")
    assert (out / "thesis.tex").read_text() == "do not delete"
