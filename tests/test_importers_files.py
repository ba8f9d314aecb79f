"""Image folders with metadata.jsonl / .csv and webdataset tar shards: exact counts."""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from capalign.data.importers import import_source
from capalign.data.importers import fetch_report as R
from capalign.data.importers.cc3m import hashed_split
from capalign.data.importers.fetch_report import SkipLog
from capalign.data.importers.splits import SPLITS, split_caps
from capalign.data.importers.webdataset import webdataset_plan
from capalign.errors import InputError
from test_importers_common import (all_rows, check_schema, load, low_pixel_limit,  # noqa: F401
                                   make_bad_files, make_escapes, noise_jpeg_bytes, report_json, rgb)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_folder_metadata_jsonl_with_every_bad_record(tmp_path, low_pixel_limit):
    root = tmp_path / "pics"
    for name in ("a.jpg", "b.jpg", "sub/c.png", "orphan.jpg"):
        rgb(root / name)
    make_bad_files(root)
    esc = make_escapes(root, tmp_path / "outside")
    rows = [
        {"file_name": "a.jpg", "captions": ["a red square", "  ", "a square"]},  # one empty caption
        {"file_name": "a.jpg", "captions": ["another one for a"]},             # several rows, one image
        {"file_name": "b.jpg", "caption": None},  # key differs from the first row's: no caption here
        {"file_name": "sub/c.png", "captions": "a single string caption"},
        {"file_name": "missing.jpg", "captions": ["x"]},
        *({"file_name": n, "captions": ["bad file"]} for n in
          ("empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "bigbomb.png")),
        *({"file_name": ref, "captions": ["escape"]} for ref in esc.values()),
    ]
    _jsonl(root / "metadata.jsonl", rows)
    rep = import_source(str(root), tmp_path / "out")
    assert rep.format == "imagefolder"
    assert sum(rep.rows.values()) == 2 and sum(rep.captions.values()) == 4
    assert rep.skipped == {R.EMPTY_CAPTION: 1, R.NO_CAPTIONS: 2,  # b.jpg (no caption), orphan.jpg (no row)
                           R.MISSING_FILE: 1, R.EMPTY_FILE: 1, R.TRUNCATED: 1, R.NOT_IMAGE: 1, R.BOMB: 2,
                           R.PATH_ESCAPE: 3}
    got = all_rows(load(tmp_path / "out"))
    assert got["a.jpg"]["captions"] == ["a red square", "a square", "another one for a"]
    assert got["sub/c.png"]["captions"] == ["a single string caption"]
    recs = report_json(tmp_path / "out")["skipped_records"]
    assert any(r["reason"] == R.NO_CAPTIONS and r["record"].endswith("orphan.jpg") for r in recs)
    # passing metadata.jsonl itself works the same
    again = import_source(str(root / "metadata.jsonl"), tmp_path / "out2")
    assert again.rows == rep.rows and again.skipped == rep.skipped


def test_folder_metadata_csv_several_rows_per_image(tmp_path):
    root = tmp_path / "pics"
    for i in range(25):
        rgb(root / f"{i}.png")
    lines = ["file_name,text"] + [f'{i}.png,"picture {i}, first"' for i in range(25)] + \
        [f"{i}.png,picture {i} second" for i in range(0, 25, 5)] + ["3.png,"]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    rep = import_source(str(root), tmp_path / "out", seed=1)
    assert rep.rows == {"train": 23, "validation": 1, "test": 1}
    assert sum(rep.captions.values()) == 30 and rep.skipped == {R.EMPTY_CAPTION: 1}
    assert all_rows(load(tmp_path / "out"))["5.png"]["captions"] == ["picture 5, first", "picture 5 second"]
    other = import_source(str(root), tmp_path / "out_seed2", seed=2)
    assert other.rows == rep.rows
    assert load(tmp_path / "out")["test"]["image_id"] != load(tmp_path / "out_seed2")["test"]["image_id"]


def test_folder_with_split_subfolders(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        for i in range(n):
            rgb(root / split / f"{i}.jpg")
        _jsonl(root / split / "metadata.jsonl", [{"file_name": f"{i}.jpg", "text": f"{split} {i}"} for i in range(n)])
    rep = import_source(str(root), tmp_path / "out")
    assert rep.rows == {"train": 5, "validation": 2, "test": 3} and rep.skipped == {}
    dd = load(tmp_path / "out")
    check_schema(dd)
    assert sorted(dd["validation"]["image_id"]) == ["validation/0.jpg", "validation/1.jpg"]


def test_folder_caption_column_option_and_malformed_metadata(tmp_path):
    root = tmp_path / "pics"
    rgb(root / "a.jpg")
    _jsonl(root / "metadata.jsonl", [{"file_name": "a.jpg", "alt": "from alt", "caption": "from caption"}])
    rep = import_source(str(root), tmp_path / "out", caption_column="alt")
    assert all_rows(load(tmp_path / "out"))["a.jpg"]["captions"] == ["from alt"] and sum(rep.rows.values()) == 1
    with pytest.raises(InputError, match="no column 'nope'"):
        import_source(str(root), tmp_path / "o2", caption_column="nope")
    (root / "metadata.jsonl").write_text('{"file_name": "a.jpg", "caption": "ok"}\n{"file_name": "b.jpg", oops}\n')
    with pytest.raises(InputError, match=r"metadata.jsonl line 2"):
        import_source(str(root), tmp_path / "o3")
    (root / "metadata.jsonl").write_text('{"file_name": "a.jpg", "caption": "ok"}\n{"caption": "no file"}\n')
    with pytest.raises(InputError, match=r"line 2.*file_name"):
        import_source(str(root), tmp_path / "o4")


# ---------------------------------------------------------------- webdataset


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path: Path, start: int, n_good: int, bad: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for i in range(start, start + n_good):
            if i % 2:
                _add(tf, f"{i:06d}.jpg", noise_jpeg_bytes(seed=i))
                _add(tf, f"{i:06d}.txt", f"caption for {i}".encode())
            else:
                _add(tf, f"{i:06d}.png", _png_bytes())
                _add(tf, f"{i:06d}.json", json.dumps({"captions": [f"first {i}", f"second {i}", ""]}).encode())
        if bad:
            _add(tf, "nocap.jpg", noise_jpeg_bytes())                       # image without captions
            _add(tf, "noimg.txt", b"a caption without an image")            # sample without image
            _add(tf, "badjson.jpg", noise_jpeg_bytes())
            _add(tf, "badjson.json", b"{not json")                          # malformed sample
            _add(tf, "trunc.jpg", noise_jpeg_bytes()[:300])                 # truncated image
            _add(tf, "trunc.txt", b"truncated image")
            _add(tf, "text.png", b"plain text, not a png")                  # not an image
            _add(tf, "text.txt", b"not an image")


def test_webdataset_shards_with_split_names(tmp_path):
    root = tmp_path / "wds"
    _shard(root / "train-000000.tar", 0, 4, bad=True)
    _shard(root / "train-000001.tar", 4, 4)
    _shard(root / "val-000000.tar", 100, 2)
    _shard(root / "test-000000.tar", 200, 3)
    rep = import_source(str(root), tmp_path / "out")
    assert rep.format == "webdataset"
    assert rep.rows == {"train": 8, "validation": 2, "test": 3}
    # odd keys: 1 caption; even keys: 2 captions (+1 empty, skipped)
    assert rep.captions == {"train": 12, "validation": 3, "test": 5}
    assert rep.skipped == {R.EMPTY_CAPTION: 7, R.NO_CAPTIONS: 1, R.NO_IMAGE: 1, R.BAD_SAMPLE: 1,
                           R.TRUNCATED: 1, R.NOT_IMAGE: 1}
    dd = load(tmp_path / "out")
    check_schema(dd)
    row = all_rows(dd)["000000"]
    assert row["captions"] == ["first 0", "second 0"] and row["image"].size == (12, 12)
    # brace pattern and a single shard read the same samples
    one = import_source(str(root / "train-{000000..000001}.tar"), tmp_path / "out2")
    assert sum(one.rows.values()) == 8
    single = import_source(str(root / "val-000000.tar"), tmp_path / "out3")
    assert single.rows == {"train": 0, "validation": 2, "test": 0}


def _ids(out: Path) -> dict[str, list[str]]:
    return {name: list(split["image_id"]) for name, split in load(out).items()}


def test_webdataset_unsplit_shards_split_by_key_hash_and_bad_shard(tmp_path):
    _shard(tmp_path / "shards" / "shard-000000.tar", 0, 30)
    _shard(tmp_path / "shards" / "shard-000001.tar", 30, 30)
    keys = [f"{i:06d}" for i in range(60)]
    rep = import_source(str(tmp_path / "shards" / "shard-*.tar"), tmp_path / "out", seed=3)
    assert _ids(tmp_path / "out") == {s: [k for k in keys if hashed_split(k, 3) == s] for s in SPLITS}
    # --limit 10: 8 / 1 / 1 at most, the first keys of each split in shard order
    rep = import_source(str(tmp_path / "shards" / "shard-*.tar"), tmp_path / "out10", seed=3, limit=10)
    assert _ids(tmp_path / "out10") == {s: [k for k in keys if hashed_split(k, 3) == s][:n]
                                        for s, n in split_caps(10).items()}
    assert rep.rows["train"] == 8
    bad = tmp_path / "broken.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(InputError, match="broken.tar"):
        import_source(str(bad), tmp_path / "out2")


def test_webdataset_train_shards_alone_give_held_out_splits_by_key_hash(tmp_path):
    _shard(tmp_path / "wds" / "train-000000.tar", 0, 40)
    _shard(tmp_path / "wds" / "train-000001.tar", 40, 40)
    _shard(tmp_path / "wds" / "test-000000.tar", 500, 3)  # test is there: only validation is carved
    import_source(str(tmp_path / "wds"), tmp_path / "out", seed=1)
    train = [f"{i:06d}" for i in range(80)]
    assert _ids(tmp_path / "out") == {
        "train": [k for k in train if hashed_split(k, 1) != "validation"],
        "validation": [k for k in train if hashed_split(k, 1) == "validation"],
        "test": ["000500", "000501", "000502"]}


def _text_shards(root: Path, n: int, per: int = 100) -> str:
    """n samples (an image member that is never decoded here, two captions), `per` to a shard."""
    root.mkdir(parents=True)
    for k in range(0, n, per):
        with tarfile.open(root / f"shard-{k // per:05d}.tar", "w") as tf:
            for i in range(k, min(n, k + per)):
                _add(tf, f"{i:09d}.jpg", b"not decoded by the plan")
                _add(tf, f"{i:09d}.txt", f"a photo of thing {i} in a field beside a small red house\n"
                                         f"another caption of sample {i}".encode())
    return str(root)


def _plan_peak(spec: str) -> tuple[int, dict[str, int]]:
    """tracemalloc's peak while every split of the plan is read through (as the writer does), and
    the candidates per split."""
    tracemalloc.start()
    try:
        plan = webdataset_plan(spec, 0, None, SkipLog())
        counts = {s: sum(1 for _ in cands) for s, (cands, _) in plan.items()}
        return tracemalloc.get_traced_memory()[1], counts
    finally:
        tracemalloc.stop()


def test_webdataset_plan_streams_the_shards_and_splits_about_90_5_5(tmp_path):
    assert isinstance(webdataset_plan(_text_shards(tmp_path / "one", 5), 0, None, SkipLog())["train"][0],
                      Iterator)
    small, _ = _plan_peak(_text_shards(tmp_path / "small", 300))
    large, counts = _plan_peak(_text_shards(tmp_path / "large", 2400))
    # every Candidate held at once costs about 740 bytes each here; streaming keeps one shard's
    # samples and the set of image ids seen (about 120 bytes a sample)
    assert (large - small) / 2100 < 300, (small, large)
    assert sum(counts.values()) == 2400
    assert 0.87 < counts["train"] / 2400 < 0.93
    assert all(0.035 < counts[s] / 2400 < 0.065 for s in ("validation", "test")), counts


def test_truncated_shard_keeps_earlier_samples(tmp_path):
    shard = tmp_path / "cut.tar"
    _shard(shard, 0, 6)
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * 0.6)])
    rep = import_source(str(shard), tmp_path / "out")
    assert 1 <= sum(rep.rows.values()) < 6
    assert rep.skipped[R.TRUNCATED_SHARD] == 1
