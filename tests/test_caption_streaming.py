"""`caption --output FILE.jsonl` streams: images are decoded a batch at a time, each batch is appended
as it finishes, an interrupted run (kill -9, Ctrl-C) keeps its finished lines and `--resume`
captions only the rest, with the same settings; many images get a bar and a summary, not a table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from capalign.data.images import ImageFiles, Unreadable, collect_images
from stopping import sigint_as_at_a_terminal
from test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HF_HUB_OFFLINE": "1"}
COUNT = 24  # more than a screenful, and enough batches of 2 that a run is caught in the middle
SLOW = ["--batch-size", "2", "--min-new-tokens", "3"]  # every caption 3+ tokens: each batch takes a while


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for i in range(COUNT):
        Image.new("RGB", (8, 8), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(folder / f"img{i:03d}.png")
    return folder


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pairs(path: Path) -> set[tuple[str, str]]:
    return {(r["image"], r["caption"]) for r in _records(path)}


@pytest.fixture(scope="module")
def uninterrupted(many, pretrained_run, tmp_path_factory) -> Path:
    from capalign.cli import main

    out = tmp_path_factory.mktemp("whole") / "whole.jsonl"
    main(["caption", str(many), "--model", str(pretrained_run), *SLOW, "--output", str(out)])
    return out


def _interrupt_after_two_lines(args: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    process = subprocess.Popen([sys.executable, "-m", "paced", *args], env=ENV, text=True,  # stalls after 2 batches
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sigint_as_at_a_terminal)
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            process.send_signal(sig)
            break
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_collect_images_lists_paths_and_decodes_nothing(tmp_path):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_text("not an image")
    paths, skipped = collect_images([tmp_path])
    assert paths == [tmp_path / "a.png"] and all(isinstance(p, Path) for p in paths)
    assert len(skipped) == 1 and "b.jpg" in skipped[0]
    lazy = ImageFiles(paths)
    assert len(lazy) == 1 and lazy[0:1][0].size == (16, 16)


def test_a_file_that_breaks_when_decoded_is_skipped_in_its_batch(pretrained_run, in_workspace, capsys):
    folder = in_workspace / "truncated"
    folder.mkdir(exist_ok=True)
    for name in ("a", "c"):
        Image.new("RGB", (64, 64), "blue").save(folder / f"{name}.png")
    Image.new("RGB", (64, 64), "red").save(folder / "b.png")
    whole = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(whole[: len(whole) // 2])  # its header is fine, its pixels are cut
    assert isinstance(ImageFiles([folder / "b.png"])[0], Unreadable)
    code, out, err = run_cli(["caption", str(folder), "--model", str(pretrained_run), "--batch-size", "1",
                              "--output", "truncated.jsonl"], capsys)
    assert code == 0, err
    assert [Path(r["image"]).name for r in _records(in_workspace / "truncated.jsonl")] == ["a.png", "c.png"]
    assert "skipped:" in err and "b.png" in err and "Traceback" not in err


def test_kill_9_keeps_the_finished_lines_and_resume_captions_the_rest(many, pretrained_run, uninterrupted, tmp_path,
                                                                       capsys):
    out = tmp_path / "o.jsonl"
    args = ["caption", str(many), "--model", str(pretrained_run), *SLOW, "--output", str(out)]
    killed = _interrupt_after_two_lines(args, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    data = out.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    kept = [json.loads(line) for line in whole.splitlines()]  # every finished line is intact JSON
    assert 2 <= len(kept) < COUNT
    code, stdout, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    images = [r["image"] for r in _records(out)]
    assert len(images) == len(set(images)) == COUNT  # each image exactly once
    assert _pairs(out) == _pairs(uninterrupted)
    assert f"Wrote {COUNT - len(kept)} captions" in stdout and "already" in stdout


def test_ctrl_c_is_130_keeps_the_lines_and_resumes(many, pretrained_run, uninterrupted, tmp_path, capsys, monkeypatch):
    out = tmp_path / "int.jsonl"
    args = ["caption", str(many), "--model", str(pretrained_run), *SLOW, "--output", str(out)]
    stopped = _interrupt_after_two_lines(args, out, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr and "interrupted" in stopped.stderr
    assert out.read_bytes().endswith(b"\n") and 2 <= len(_records(out)) < COUNT
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert len(_records(out)) == COUNT and _pairs(out) == _pairs(uninterrupted)


def test_resume_drops_a_cut_last_line_and_checks_the_settings(pretrained_run, in_workspace, capsys):
    folder = REPO / "examples" / "images"
    base = ["caption", str(folder), "--model", str(pretrained_run), "--output", "cut.jsonl"]
    code, _, err = run_cli(base, capsys)
    assert code == 0, err
    out = in_workspace / "cut.jsonl"
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][:10])  # a kill in the middle of the last line
    code, stdout, err = run_cli([*base, "--resume"], capsys)
    assert code == 0, err
    assert out.read_bytes() == full and "Wrote 1 captions" in stdout
    before = out.read_bytes()
    for args, named in [(["--resume", "--num-beams", "2"], "--num-beams 1 → 2"),
                        (["--resume", "--scores"], "scores False → True"),
                        (["--resume", "--overwrite"], "either --resume"),
                        ([], "cut.jsonl exists; choose another --output or pass --overwrite")]:
        code, _, err = run_cli([*base, *args], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
        assert out.read_bytes() == before
    (in_workspace / "cut.jsonl.meta.json").unlink()
    code, _, err = run_cli([*base, "--resume"], capsys)
    assert code == 2 and "settings it was written with are unknown" in err and out.read_bytes() == before
    code, _, err = run_cli(["caption", str(folder), "--model", str(pretrained_run), "--output", "c.json", "--resume"], capsys)
    assert code == 2 and "--resume continues a --output FILE.jsonl" in err


def test_many_images_get_a_bar_and_a_summary_and_table_brings_the_rows_back(many, pretrained_run, in_workspace, capsys):
    base = ["caption", str(many), "--model", str(pretrained_run), "--batch-size", "8"]
    code, out, err = run_cli([*base, "--output", "summary.jsonl"], capsys)
    assert code == 0, err
    assert "img000.png" not in out and f"Wrote {COUNT} captions" in out and f"{COUNT}/{COUNT}" in err
    code, out, err = run_cli([*base, "--output", "table.json", "--table"], capsys)
    assert code == 0, err
    assert "img000.png" in out and f"img{COUNT - 1:03d}.png" in out
    assert len(json.loads((in_workspace / "table.json").read_text())) == COUNT
