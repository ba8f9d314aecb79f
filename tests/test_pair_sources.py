"""Preference pairs from files (JSONL / JSON / CSV, PASCAL-50S votes) and image-free text pairs."""

import csv
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from capalign.pairs.sources import MAX_CAPTION_WORDS, load_pair_source
from capalign.errors import InputError


@pytest.fixture
def pair_folder(tmp_path) -> Path:
    (tmp_path / "imgs").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "imgs" / f"{name}.png")
    (tmp_path.parent / "outside.png").write_bytes((tmp_path / "imgs" / "a.png").read_bytes())
    return tmp_path


def test_jsonl_pairs_with_bad_records_counted(pair_folder):
    rows = [
        {"image": "imgs/a.png", "chosen": "a red square", "rejected": "a blue circle"},
        {"image": "imgs/b.png", "chosen": "a red square", "rejected": "a green circle"},
        {"image": "imgs/missing.png", "chosen": "x", "rejected": "y"},
        {"image": "../outside.png", "chosen": "x", "rejected": "y"},
        {"image": "imgs/a.png", "chosen": "", "rejected": "y"},
        {"image": "imgs/a.png", "chosen": "same", "rejected": "same"},
    ]
    path = pair_folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_pair_source(str(path))
    assert len(loaded.pairs) == 2
    assert loaded.pairs[0]["image"] == (pair_folder / "imgs" / "a.png").resolve()
    assert dict(loaded.skipped) == {"missing_image": 1, "path_escapes_folder": 1, "empty_caption": 1, "chosen_equals_rejected": 1}


def test_pascal_style_votes_in_csv_and_json(pair_folder):
    rows = [
        {"image": "imgs/a.png", "caption_a": "a red square", "caption_b": "a dog", "votes_a": "4", "votes_b": "1"},
        {"image": "imgs/b.png", "caption_a": "a cat", "caption_b": "a red square", "votes_a": "0", "votes_b": "5"},
        {"image": "imgs/b.png", "caption_a": "one", "caption_b": "two", "votes_a": "2", "votes_b": "2"},
    ]
    with (pair_folder / "votes.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (pair_folder / "votes.json").write_text(json.dumps(rows))
    for name in ("votes.csv", "votes.json"):
        loaded = load_pair_source(str(pair_folder / name))
        assert [(p["chosen"], p["rejected"]) for p in loaded.pairs] == [("a red square", "a dog"), ("a red square", "a cat")]
        assert loaded.skipped == {"tied_votes": 1}


def test_malformed_pair_files_name_the_line(pair_folder):
    path = pair_folder / "broken.jsonl"
    path.write_text('{"image": "imgs/a.png", "chosen": "a", "rejected": "b"}\n{not json\n')
    with pytest.raises(InputError, match="line 2"):
        load_pair_source(str(path))
    path.write_text('{"image": "imgs/a.png", "best": "a"}\n')
    with pytest.raises(InputError, match="line 1: needs chosen and rejected"):
        load_pair_source(str(path))


def test_text_pairs_keep_only_caption_length_answers(tmp_path):
    long = " ".join(["word"] * (MAX_CAPTION_WORDS + 1))
    data = datasets.DatasetDict({"train": datasets.Dataset.from_list([
        {"prompt": "describe", "chosen": "a red square on the left", "rejected": "a thing"},
        {"prompt": "describe", "chosen": long, "rejected": "short"},
        {"prompt": "describe", "chosen": "same", "rejected": "same"},
    ])})
    data.save_to_disk(str(tmp_path / "prefs"))
    loaded = load_pair_source(str(tmp_path / "prefs"))
    assert [(p["image"], p["chosen"]) for p in loaded.pairs] == [(None, "a red square on the left")]
    assert loaded.skipped == {"longer_than_a_caption": 1, "bad_pair": 1}


def test_align_from_pairs_file_and_from_text_pairs(pretrained_run, in_workspace, capsys):
    from test_cli import run_cli

    from datasets import load_from_disk

    train = load_from_disk("data/shapes")["train"]
    rows = []
    (in_workspace / "pair_imgs").mkdir(exist_ok=True)
    for i in range(10):
        train[i]["image"].save(in_workspace / "pair_imgs" / f"{i}.png")
        rows.append({"image": f"pair_imgs/{i}.png", "chosen": train[i]["captions"][0], "rejected": "a purple triangle"})
    (in_workspace / "mypairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(["align", "--model", str(pretrained_run), "--pairs", "mypairs.jsonl", "--max-steps", "2",
                              "--batch-size", "4", "--out", "runs/from-file"], capsys)
    assert code == 0, err
    assert "10 pairs" in out

    datasets.DatasetDict({"train": datasets.Dataset.from_list(
        [{"prompt": "p", "chosen": "a red circle", "rejected": "a circle red red"}] * 8)}).save_to_disk("prefs")
    code, out, err = run_cli(["align", "--model", str(pretrained_run), "--pairs", "prefs", "--max-steps", "2",
                              "--batch-size", "4", "--out", "runs/from-text"], capsys)
    assert code == 0, err
    records = [json.loads(l) for l in (in_workspace / "runs/from-text/metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in records)
