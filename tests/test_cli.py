"""Every subcommand end to end on the tiny workspace, and bad input exiting 2 with one line."""

import json
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from capalign.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `capalign ARGS` in-process; returns (exit status, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_fetch_shapes_writes_prepared_dataset(in_workspace, capsys):
    code, out, _ = run_cli(["fetch", "shapes", "--out", "fetched", "--limit", "12", "--seed", "1"], capsys)
    assert code == 0
    from datasets import load_from_disk

    data = load_from_disk("fetched")
    assert sum(len(s) for s in data.values()) == 12
    assert data["train"].features["image"].__class__.__name__ == "Image"


def test_pretrain_align_caption_evaluate_compare(in_workspace, capsys, pretrained_run):
    code, out, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "4", "--out", "runs/p"], capsys)
    assert code == 0, err
    records = [json.loads(l) for l in (in_workspace / "runs/p/metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and r["step"] == 4 for r in records)
    assert (in_workspace / "runs/p/capalign.yaml").is_file()

    code, out, err = run_cli(["align", "--model", "runs/p", "--beta", "0.1", "--max-steps", "3", "--batch-size", "8", "--out", "runs/a"], capsys)
    assert code == 0, err
    records = [json.loads(l) for l in (in_workspace / "runs/a/metrics.jsonl").read_text().splitlines()]
    assert any("rewards/accuracies" in r and "rewards/margins" in r for r in records)

    image = in_workspace / "photo.png"
    Image.new("RGB", (64, 64), (250, 250, 250)).save(image)
    code, out, err = run_cli(["caption", str(image), "--model", "runs/a", "--output", "caps.json", "--num-beams", "2"], capsys)
    assert code == 0, err
    results = json.loads((in_workspace / "caps.json").read_text())
    assert results[0]["image_id"] == "photo" and isinstance(results[0]["caption"], str)
    code, out, err = run_cli(["caption", str(image), "--model", "runs/a", "--output", "caps.jsonl", "--temperature", "1.0"], capsys)
    assert code == 0, err
    assert json.loads((in_workspace / "caps.jsonl").read_text().splitlines()[0])["image"] == str(image)

    code, out, err = run_cli(["evaluate", "--model", "runs/a", "--metrics", "bleu,cider,hallucination", "--output", "eval.json"], capsys)
    assert code == 0, err
    metrics = json.loads((in_workspace / "eval.json").read_text())["metrics"]
    assert {"BLEU-4", "CIDEr", "Hallucination"} <= set(metrics)
    assert 0.0 <= metrics["Hallucination"] <= 1.0
    # the align run's model card carries the align report's and this evaluation's numbers
    meta = yaml.safe_load((in_workspace / "runs/a/README.md").read_text().split("---\n", 2)[1])
    results = meta["model-index"][0]["results"]
    assert "dpo" in meta["tags"] and [r["dataset"]["split"] for r in results] == ["test (alignment report)", "test"]
    assert {"name": "CIDEr", "type": "cider", "value": round(metrics["CIDEr"], 4)} in results[1]["metrics"]

    code, out, err = run_cli(["compare", "runs/p", "runs/a", "--metrics", "cider,hallucination", "--output", "cmp.json"], capsys)
    assert code == 0, err
    assert "baseline p" in out
    compared = json.loads((in_workspace / "cmp.json").read_text())
    assert set(compared["systems"]) == {"p", "a"} and compared["baseline"] == "p"


def test_fetch_local_folder_and_offline_hub_name(in_workspace, capsys, monkeypatch):
    folder = in_workspace / "mine"
    folder.mkdir(exist_ok=True)
    for i in range(4):
        Image.new("RGB", (32, 24), (i * 40, 0, 0)).save(folder / f"im{i}.png")
    rows = [{"file_name": f"im{i}.png", "text": f"a red picture number {i}"} for i in range(4)]
    rows.append({"file_name": "absent.png", "text": "gone"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(["fetch", str(folder), "--out", "mine_prepared"], capsys)
    assert code == 0, err
    report = json.loads((in_workspace / "mine_prepared" / "fetch_report.json").read_text())
    assert sum(report["rows"].values()) == 4 and report["skipped"] == {"missing_file": 1}

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(["fetch", "flickr8k", "--out", "f8k"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "connected machine" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["caption", "missing.jpg"], "does not exist"),
        (["caption", "notes.jpg"], "not a readable image"),
        (["evaluate", "--metrics", "bleu,nonsense"], "nonsense"),
        (["align", "--beta", "-0.1"], "--beta must be positive"),
        (["pretrain", "--config", "absent.yaml"], "absent.yaml does not exist"),
        (["pretrain", "--no-such-option"], "No such option"),
        (["caption", "photo.png", "--model", "nowhere"], "nowhere does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(in_workspace, capsys, args, message):
    (in_workspace / "notes.jpg").write_text("this is not a picture")
    Image.new("RGB", (8, 8)).save(in_workspace / "photo.png")
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_console_script_and_module_entry_points(tmp_path):
    done = subprocess.run([sys.executable, "-m", "capalign", "align", "--beta", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "--beta must be positive" in done.stderr


def test_caption_folder_skips_unreadable_files_and_says_so(in_workspace, capsys, pretrained_run):
    folder = in_workspace / "mixed"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (250, 250, 250)).save(folder / "good.png")
    (folder / "broken.jpg").write_text("not an image")
    code, out, err = run_cli(["caption", str(folder), "--model", str(pretrained_run), "--output", "mixed.jsonl"], capsys)
    assert code == 0, err
    lines = (in_workspace / "mixed.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == [str(folder / "good.png")]
    assert "skipped:" in err and "broken.jpg" in err
