"""Broken and hostile input files: damaged prepared datasets, text that is not UTF-8, one bad record
in an import, out-of-range `fetch --image-size`.

Every case builds its files in tmp_path and runs the CLI in-process: a broken file is exit 2 with at
most three stderr lines and no traceback; a bad record is skipped and counted (exit 0); the user's
files are byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from capalign.data.store import prepare_shapes
from test_cli import run_cli

LATIN1_CAPTION = "un café près de la fenêtre".encode("latin-1")  # 0xE9 is not UTF-8 on its own


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(args: list[str], capsys, user: Path, code: int = 2) -> str:
    """Run `capalign ARGS`; assert the exit status, a short stderr without traceback, and that the
    files under `user` are unchanged. Returns stderr."""
    before = _files(user)
    got, out, err = run_cli([str(a) for a in args], capsys)
    assert got == code, (got, out, err)
    assert len(err.strip().splitlines()) <= 3 and "Traceback" not in err + out, err
    assert _files(user) == before
    return err


def _png(path: Path, colour=(200, 0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


# ---------------------------------------------------------------- damaged prepared datasets

@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared") / "good"
    prepare_shapes(root, limit=8, image_size=16)
    return root


def _arrow(folder: Path) -> Path:
    return next((folder / "train").glob("data-*.arrow"))


def _half(d: Path) -> None:
    f = _arrow(d)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _random(d: Path) -> None:
    f = _arrow(d)
    f.write_bytes(os.urandom(f.stat().st_size))


def _rows_differ(d: Path) -> None:  # a truncation at a record-batch boundary: the report knows the rows
    (d / "fetch_report.json").write_text(json.dumps({"source": "shapes", "rows": {"train": 99}}))


def _state_escapes(d: Path) -> None:
    state = json.loads((d / "train" / "state.json").read_text())
    state["_data_files"] = [{"filename": "../../elsewhere.arrow"}]
    (d / "train" / "state.json").write_text(json.dumps(state))


def _features_lie(d: Path) -> None:
    info = json.loads((d / "train" / "dataset_info.json").read_text())
    info["features"]["captions"] = {"dtype": "int64", "_type": "Value"}
    (d / "train" / "dataset_info.json").write_text(json.dumps(info))


DAMAGE = {
    "arrow truncated to half": _half,
    "arrow replaced by random bytes": _random,
    "arrow file missing": lambda d: _arrow(d).unlink(),
    "garbage dataset_info.json": lambda d: (d / "train" / "dataset_info.json").write_bytes(b"\x00{garbage"),
    "garbage state.json": lambda d: (d / "train" / "state.json").write_text("[1, 2"),
    "garbage dataset_dict.json": lambda d: (d / "dataset_dict.json").write_text("not json"),
    "dataset_dict.json lists a folder outside": lambda d: (d / "dataset_dict.json").write_text('{"splits": ["../x"]}'),
    "dataset_dict.json is a list": lambda d: (d / "dataset_dict.json").write_text('["train"]'),
    "split folder missing": lambda d: shutil.rmtree(d / "validation"),
    "state.json names a file outside": _state_escapes,
    "dataset_info.json features lie": _features_lie,
    "fewer rows than fetch_report.json": _rows_differ,
}


@pytest.fixture
def damaged(good_dataset, tmp_path, request) -> Path:
    d = tmp_path / "user" / "data"
    shutil.copytree(good_dataset, d)
    DAMAGE[request.param](d)
    return d


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_damaged_dataset_is_one_line_for_evaluate_and_pretrain(damaged, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "user" / "results.json"
    results.write_text('[{"image_id": "x", "caption": "a red square"}]')
    for args in (["evaluate", "--data", damaged, "--results", results, "--metrics", "bleu"],
                 ["pretrain", "--data", damaged, "--max-steps", "1", "--out", tmp_path / "runs" / "p"]):
        err = _cli(args, capsys, tmp_path / "user")
        assert "damaged prepared dataset" in err and f"--out {damaged}`" in err and "re-run `capalign fetch" in err
    assert not (tmp_path / "runs" / "p").exists()


@pytest.mark.parametrize("damaged", ["arrow truncated to half", "garbage dataset_info.json"], indirect=True)
def test_damaged_dataset_is_one_line_for_align(damaged, pretrained_run, tmp_path, capsys):
    err = _cli(["align", "--model", pretrained_run, "--data", damaged, "--out", tmp_path / "a"], capsys,
               tmp_path / "user")
    assert "re-run `capalign fetch" in err


def test_dataset_storing_image_paths_is_refused(tmp_path, capsys):
    import datasets

    secret = tmp_path / "user" / "secret.png"
    _png(secret)
    rows = {"image_id": ["a"], "image": [{"bytes": None, "path": str(secret)}], "captions": [["a red square"]]}
    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image(),
                                  "captions": datasets.List(datasets.Value("string"))})
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "user" / "d"))
    results = tmp_path / "user" / "results.json"
    results.write_text('[{"image_id": "a", "caption": "a red square"}]')
    err = _cli(["evaluate", "--data", tmp_path / "user" / "d", "--results", results, "--split", "test"], capsys,
               tmp_path / "user")
    assert "image paths instead of image bytes" in err


def test_fetch_report_source_names_the_command(good_dataset, tmp_path, capsys):
    d = tmp_path / "user" / "d"
    shutil.copytree(good_dataset, d)
    (d / "fetch_report.json").write_text(json.dumps({"source": "captions.json\x1b[2J", "rows": {}}))
    _half(d)
    err = _cli(["evaluate", "--data", d, "--results", d / "fetch_report.json"], capsys, tmp_path / "user")
    assert "`capalign fetch captions.json[2J --out" in err and "\x1b" not in err


# ---------------------------------------------------------------- text that is not UTF-8

def _flickr(root: Path, text: bytes, name: str = "captions.txt") -> Path:
    for i in range(4):
        _png(root / "Images" / f"{i}.png", (60 * i, 0, 0))
    (root / name).write_bytes(text)
    return root / name


def test_latin1_flickr_captions_name_byte_and_line(tmp_path, capsys):
    src = _flickr(tmp_path / "user", b"image,caption\n0.png,a dog\n1.png," + LATIN1_CAPTION + b"\n")
    err = _cli(["fetch", src, "--out", tmp_path / "out"], capsys, tmp_path / "user")
    assert "not UTF-8 text (byte 0xE9 at line 3)" in err and "iconv -f latin1 -t utf-8" in err
    assert not (tmp_path / "out").exists()


def test_latin1_token_file(tmp_path, capsys):
    src = _flickr(tmp_path / "user", b"0.png#0\tok\n" + b"1.png#0\t" + LATIN1_CAPTION + b"\n", "Flickr8k.token.txt")
    err = _cli(["fetch", src, "--out", tmp_path / "out"], capsys, tmp_path / "user")
    assert "byte 0xE9 at line 2" in err


def test_bom_captions_csv_is_read(tmp_path, capsys):
    lines = "image,caption\n" + "".join(f"{i}.png,picture {i}\n" for i in range(4))
    src = _flickr(tmp_path / "user", b"\xef\xbb\xbf" + lines.encode())
    _cli(["fetch", src, "--out", tmp_path / "out"], capsys, tmp_path / "user", code=0)
    report = json.loads((tmp_path / "out" / "fetch_report.json").read_text())
    assert sum(report["rows"].values()) == 4 and report["skipped"] == {}


@pytest.mark.parametrize("name, text, code", [
    ("metadata.csv", b"\xef\xbb\xbffile_name,caption\n0.png,one\n1.png,two\n", 0),
    ("metadata.csv", b"file_name,caption\n0.png," + LATIN1_CAPTION + b"\n", 2),
    ("metadata.jsonl", b'\xef\xbb\xbf{"file_name": "0.png", "caption": "one"}\n', 0),
    ("metadata.jsonl", b'{"file_name": "0.png", "caption": "one"}\n{"file_name": "1.png", "caption": "'
     + LATIN1_CAPTION + b'"}\n', 2),
    ("metadata.jsonl", "\n".join(['{"file_name": "0.png", "caption": "x"}'] * 2).encode("utf-16"), 2),
])
def test_image_folder_metadata_encodings(tmp_path, capsys, name, text, code):
    root = tmp_path / "user" / "pics"
    for i in range(2):
        _png(root / f"{i}.png")
    (root / name).write_bytes(text)
    err = _cli(["fetch", root, "--out", tmp_path / "out"], capsys, tmp_path / "user", code=code)
    if code == 2:
        assert f"metadata file {root / name} is not UTF-8 text" in err


def _coco(images: list, annotations: list) -> str:
    return json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False)


def test_coco_json_with_bom_and_in_latin1(tmp_path, capsys):
    user = tmp_path / "user"
    _png(user / "im" / "0.png")
    doc = _coco([{"id": 0, "file_name": "0.png"}], [{"image_id": 0, "caption": "café"}])
    (user / "bom.json").write_bytes(b"\xef\xbb\xbf" + doc.encode())
    (user / "latin.json").write_bytes(doc.encode("latin-1"))
    _cli(["fetch", user / "bom.json", "--images", user / "im", "--out", tmp_path / "o1"], capsys, user, code=0)
    err = _cli(["fetch", user / "latin.json", "--images", user / "im", "--out", tmp_path / "o2"], capsys, user)
    assert "annotation file" in err and "byte 0xE9 at line 1" in err


@pytest.mark.parametrize("what", ["results", "references"])
def test_latin1_results_and_references(tmp_path, capsys, what):
    user = tmp_path / "user"
    user.mkdir()
    refs = json.dumps({"1": ["a café", "a cafe"]}, ensure_ascii=False)
    results = json.dumps([{"image_id": 1, "caption": "a café"}], ensure_ascii=False)
    (user / "refs.json").write_bytes(refs.encode("latin-1" if what == "references" else "utf-8-sig"))
    (user / "res.json").write_bytes(results.encode("latin-1" if what == "results" else "utf-8-sig"))
    err = _cli(["evaluate", "--results", user / "res.json", "--references", user / "refs.json", "--metrics", "bleu"],
               capsys, user)
    assert f"{what} file" in err and "not UTF-8 text (byte 0xE9 at line 1)" in err


def test_bom_results_and_references_are_scored(tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "refs.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"1": ["a red square", "a square"]}).encode())
    (user / "res.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"image_id": 1, "caption": "a red square"}\n')
    _cli(["evaluate", "--results", user / "res.jsonl", "--references", user / "refs.json", "--metrics", "bleu"],
         capsys, user, code=0)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"[[[[" * 50000])
def test_results_file_empty_binary_or_nested_too_deep(tmp_path, capsys, content):
    user = tmp_path / "user"
    user.mkdir()
    (user / "refs.json").write_text(json.dumps({"1": ["a red square"]}))
    (user / "res.json").write_bytes(content)
    _cli(["evaluate", "--results", user / "res.json", "--references", user / "refs.json", "--metrics", "bleu"],
         capsys, user)


def test_pairs_files_latin1_bom_and_bad_records(tmp_path):
    from capalign.errors import InputError
    from capalign.pairs.sources import load_pair_source

    _png(tmp_path / "a.png")
    (tmp_path / "latin.jsonl").write_bytes(b'{"image": "a.png", "chosen": "' + LATIN1_CAPTION + b'", "rejected": "x"}\n')
    with pytest.raises(InputError, match=r"pairs file .*latin.jsonl is not UTF-8 text \(byte 0xE9 at line 1\)"):
        load_pair_source(str(tmp_path / "latin.jsonl"))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfimage,chosen,rejected\na.png,a red square,a blue circle\n")
    assert len(load_pair_source(str(tmp_path / "bom.csv")).pairs) == 1
    rows = [{"image": "a.png", "chosen": "ok", "rejected": "fine"},
            {"image": "a\u0000.png", "chosen": "x", "rejected": "y"},
            {"image": ["a.png"], "chosen": "x", "rejected": "y"},
            {"image": "a.png", "chosen": 5, "rejected": "y"},
            {"image": "a.png", "chosen": "x", "rejected": "\ud800"},
            {"image": "x" * 5000 + ".png", "chosen": "x", "rejected": "y"}]
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    loaded = load_pair_source(str(tmp_path / "bad.json"))
    assert len(loaded.pairs) == 1
    assert loaded.skipped == {"bad_image_path": 3, "caption_not_text": 2}


def test_latin1_pairs_file_through_align(pretrained_run, tmp_path, capsys):
    user = tmp_path / "user"
    _png(user / "a.png")
    (user / "pairs.csv").write_bytes(b"image,chosen,rejected\na.png," + LATIN1_CAPTION + b",x\n")
    err = _cli(["align", "--model", pretrained_run, "--pairs", user / "pairs.csv", "--out", tmp_path / "a",
                "--max-steps", "1"], capsys, user)
    assert "byte 0xE9 at line 2" in err


# ---------------------------------------------------------------- one bad record, skipped and counted

def _report(out: Path) -> dict:
    return json.loads((out / "fetch_report.json").read_text(encoding="utf-8"))


def test_coco_bad_records_are_skipped_and_counted(tmp_path, capsys):
    user = tmp_path / "user"
    for i in range(4):
        _png(user / "im" / f"{i}.png")
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(4)] + [
        {"id": [9], "file_name": "0.png"},          # id not a string / int
        {"id": None, "file_name": "0.png"},
        {"id": True, "file_name": "0.png"},
        {"id": 2, "file_name": "3.png"},             # duplicate id
        {"id": 20, "file_name": "bad\u0000name.png"},  # NUL byte in the file name
        {"id": 21, "file_name": 17},                  # file name not a string
    ]
    anns = [{"image_id": i, "caption": f"picture {i}"} for i in range(4)] + [
        {"image_id": 0, "caption": 42},                # a number
        {"image_id": 0, "caption": None},              # null
        {"image_id": 1, "caption": "lone \ud800 surrogate"},
        {"image_id": {"x": 1}, "caption": "odd id"},
        {"image_id": 20, "caption": "nul"}, {"image_id": 21, "caption": "int name"},
    ]
    (user / "c.json").write_text(json.dumps({"images": images, "annotations": anns}))  # \ud800, \u0000 as escapes
    _cli(["fetch", user / "c.json", "--images", user / "im", "--out", tmp_path / "out"], capsys, user, code=0)
    rep = _report(tmp_path / "out")
    assert sum(rep["rows"].values()) == 4
    assert rep["skipped"] == {"bad_image_id": 4, "duplicate_image_id": 1, "bad_file_name": 2,
                              "caption_not_text": 2, "empty_caption": 1, "caption_for_unknown_image": 1}


def test_folder_metadata_bad_records(tmp_path, capsys):
    root = tmp_path / "user" / "pics"
    for i in range(3):
        _png(root / f"{i}.png")
    rows = [{"file_name": "0.png", "caption": "one"}, {"file_name": "1.png", "caption": 3.5},
            {"file_name": "1.png", "caption": "one \ud800"}, {"file_name": "2.png", "caption": "two"},
            {"file_name": "bad\u0000.png", "caption": "x"}, {"file_name": "\udce9.png", "caption": "x"},
            {"file_name": 5, "caption": "x"}, {"file_name": None, "caption": "x"}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _cli(["fetch", root, "--out", tmp_path / "out"], capsys, tmp_path / "user", code=0)
    rep = _report(tmp_path / "out")
    assert sum(rep["rows"].values()) == 2
    assert rep["skipped"] == {"caption_not_text": 2, "image_without_captions": 1, "bad_file_name": 4}


def test_karpathy_and_flickr_bad_records(tmp_path, capsys):
    user = tmp_path / "user"
    for i in range(3):
        _png(user / "im" / f"{i}.png")
    images = [{"filename": f"{i}.png", "cocoid": i, "split": "train", "sentences": [{"raw": f"pic {i}"}]} for i in range(3)]
    images += [{"filename": "0.png", "cocoid": 1.5, "split": "train", "sentences": [{"raw": "x"}]},
               {"filename": "1.png", "cocoid": 7, "split": "test", "sentences": [{"tokens": ["a", 3]}]}]
    (user / "k.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    _cli(["fetch", user / "k.json", "--images", user / "im", "--out", tmp_path / "o1"], capsys, user, code=0)
    assert _report(tmp_path / "o1")["skipped"] == {"bad_image_id": 1, "caption_not_text": 1,
                                                   "image_without_captions": 1}
    token = b"0.png#0\tpic\n1.png#0\tpic\nbad\x00.png#0\tnul name\n"
    src = _flickr(user / "flickr", token, "Flickr8k.token.txt")
    _cli(["fetch", src, "--out", tmp_path / "o2"], capsys, user, code=0)
    assert _report(tmp_path / "o2")["skipped"] == {"bad_file_name": 1}


@pytest.mark.parametrize("name, content", [
    ("c.json", b"[1, 2, 3]"),                                    # a COCO json that is a list
    ("c.json", b""),                                             # empty
    ("c.json", b"[" * 100000),                                   # nested too deep
    ("captions.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),  # binary named like a captions file
    ("captions.txt", b""),
    ("metadata.jsonl", b'{"file_name": "0.png", "caption": "x"}\n[1, 2]\n'),  # a line that is not an object
    ("list.tsv", b"a caption\thttp://example.invalid/x.jpg\n" + LATIN1_CAPTION + b"\thttp://e.invalid/y\n"),
])
def test_broken_annotation_files_are_one_line(tmp_path, capsys, name, content):
    user = tmp_path / "user"
    _png(user / "Images" / "0.png")
    (user / name).write_bytes(content)
    _cli(["fetch", user / name, "--images", user / "Images", "--out", tmp_path / "out"], capsys, user)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- fetch --image-size

@pytest.mark.parametrize("source, size", [("shapes", 0), ("shapes", -3), ("shapes", 10**6), ("shapes", 4),
                                          ("coco", -1), ("coco", 10**6)])
def test_image_size_out_of_range(tmp_path, capsys, source, size):
    user = tmp_path / "user"
    user.mkdir()
    (user / "c.json").write_text(_coco([], []))
    src = "shapes" if source == "shapes" else user / "c.json"
    err = _cli(["fetch", src, "--image-size", size, "--images", user, "--out", tmp_path / "out"], capsys, user)
    assert f"--image-size {size} is out of range" in err and "16 to 4096" in err
    assert ("0 (keep the size)" in err) == (source != "shapes")
    assert not (tmp_path / "out").exists()


def test_an_image_damaged_inside_the_prepared_data_stops_training_in_one_line(tmp_path, in_workspace, capsys):
    """The up-front check decodes only a split's first and last rows; a damaged image further in is
    found when its batch is made, and ends the run in one line instead of PIL's traceback."""
    import datasets

    from capalign.data.store import save_atomically

    source = prepare_shapes(tmp_path / "shapes", limit=40)
    train = source["train"].cast_column("image", datasets.Image(decode=False))
    middle = len(train) // 2
    train = train.map(lambda row, i: {"image": {"bytes": b"not an image" if i == middle else row["image"]["bytes"],
                                                "path": None}}, with_indices=True)
    damaged = datasets.DatasetDict({**source, "train": train.cast_column("image", datasets.Image())})
    save_atomically(damaged, tmp_path / "damaged")
    capsys.readouterr()  # the datasets library's own progress output while the test built the data
    code, _, err = run_cli(["pretrain", "--data", str(tmp_path / "damaged"), "--max-steps", "3", "--batch-size", "64",
                            "--out", "runs/damaged-image"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"row {middle} in {tmp_path / 'damaged'}" in lines[0] and "cannot be decoded" in lines[0]
