"""Nothing lost: signals checkpoint and resume exactly, damaged checkpoints are detected, finished
runs and results are not overwritten, a run folder in use is refused, a full disk is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from capalign.config import build_config
from capalign.train import checkpoints
from capalign.train.engine import Engine
from capalign.train.pretrain import pretrain

from stopping import interrupt_at_step
from test_cli import run_cli
from test_engine import _losses

REPO = Path(__file__).resolve().parents[1]


def _capalign(args: list[str], cwd: Path, module: str = "capalign", **kwargs) -> subprocess.Popen:
    """`python -m MODULE ARGS`: capalign, or tests/paced.py's stalling stand-in for it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_sigterm_checkpoints_and_resume_reaches_the_same_final_loss(workspace):
    common = ["--config", "tiny.yaml", "--max-steps", "12", "--seed", "0"]
    straight = _capalign(["pretrain", *common, "--out", "runs/sig-straight"], workspace)
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    stopped = _capalign(["pretrain", *common, "--out", "runs/sig-stopped"], workspace, module="paced")
    metrics = workspace / "runs/sig-stopped/metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    stopped.send_signal(signal.SIGTERM)
    code = stopped.wait(timeout=120)
    err = stopped.stderr.read()
    assert code == 128 + signal.SIGTERM, err
    assert "checkpoint saved at" in err and "Traceback" not in err
    assert not (workspace / "runs/sig-stopped/run.json").exists()  # not marked finished
    resumed = _capalign(["pretrain", *common, "--out", "runs/sig-stopped", "--resume"], workspace)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = _losses(workspace / "runs/sig-straight"), _losses(workspace / "runs/sig-stopped")
    assert sorted(a) == sorted(b) and b[12] == pytest.approx(a[12], rel=1e-5)


def _interrupted_run(out: Path, monkeypatch, keep: int = 3) -> Path:
    config = build_config(None, Path("tiny.yaml"), {"train": {"max_steps": 12, "checkpoint_every": 2, "eval_every": 100,
                                                              "keep_checkpoints": keep}})
    resume_normally = interrupt_at_step(monkeypatch, 6)
    with pytest.raises(SystemExit):
        pretrain(config, out)
    resume_normally()
    return config


def test_only_the_newest_checkpoints_are_kept_and_each_is_sealed(in_workspace, monkeypatch):
    _interrupted_run(Path("runs/kept"), monkeypatch, keep=2)
    folders = checkpoints.checkpoints_newest_first(in_workspace / "runs/kept/checkpoints")
    assert [f.name for f in folders] == ["step-00000006", "step-00000004"]
    assert all(checkpoints.damage(f) is None for f in folders)
    assert not list((in_workspace / "runs/kept/checkpoints").glob("*.partial"))


def test_damaged_checkpoint_falls_back_to_the_newest_intact_one(in_workspace, monkeypatch, capsys):
    _interrupted_run(Path("runs/damaged"), monkeypatch)
    root = in_workspace / "runs/damaged/checkpoints"
    newest = checkpoints.checkpoints_newest_first(root)[0]
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a truncated file
    capsys.readouterr()
    code, _, err = run_cli(["pretrain", "--out", "runs/damaged", "--resume"], capsys)  # the CLI shows the library's warnings
    assert code == 0, err
    assert "skipping checkpoint step-00000006" in err and weights.name in err
    assert "newest intact checkpoint, step-00000004" in err
    assert json.loads((in_workspace / "runs/damaged/run.json").read_text())["steps"] == 12


def test_no_intact_checkpoint_is_one_line_naming_the_damaged_file(in_workspace, monkeypatch, capsys):
    _interrupted_run(Path("runs/ruined"), monkeypatch)
    for folder in checkpoints.checkpoints_newest_first(in_workspace / "runs/ruined/checkpoints"):
        (folder / checkpoints.MANIFEST).write_text("{not json")
    capsys.readouterr()
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "12", "--out", "runs/ruined", "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no intact checkpoint" in err and "manifest.json" in err and "Traceback" not in err


def test_a_finished_run_is_never_overwritten(pretrained_run, in_workspace, capsys):
    before = (pretrained_run / "model.safetensors").read_bytes()
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "2", "--out", str(pretrained_run)], capsys)
    assert code == 2 and "holds a finished run" in err and "--overwrite" in err
    assert (pretrained_run / "model.safetensors").read_bytes() == before


def test_overwrite_replaces_the_run_records_and_checkpoints(in_workspace, monkeypatch, capsys):
    _interrupted_run(Path("runs/replaced"), monkeypatch)  # records up to step 6, checkpoints at 2, 4, 6
    assert checkpoints.checkpoints_newest_first(in_workspace / "runs/replaced/checkpoints")
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "3", "--out", "runs/replaced", "--overwrite"], capsys)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (in_workspace / "runs/replaced/metrics.jsonl").read_text().splitlines()]
    assert steps and max(steps) == 3 and steps == sorted(steps)  # only the new run's records
    assert not checkpoints.checkpoints_newest_first(in_workspace / "runs/replaced/checkpoints")  # none of the old run's left


def test_existing_results_file_needs_overwrite(pretrained_run, in_workspace, capsys):
    target = in_workspace / "kept.json"
    target.write_text("[]")
    image = Path(__file__).resolve().parents[1] / "examples" / "images" / "red_circle.png"
    code, _, err = run_cli(["caption", str(image), "--model", str(pretrained_run), "--output", str(target)], capsys)
    assert code == 2 and "--overwrite" in err and target.read_text() == "[]"
    code, _, _ = run_cli(["caption", str(image), "--model", str(pretrained_run), "--output", str(target), "--overwrite"], capsys)
    assert code == 0 and json.loads(target.read_text())[0]["image_id"] == "red_circle"


def test_a_run_folder_in_use_is_refused_and_a_stale_lock_taken_over(in_workspace, capsys):
    from capalign.runs import LOCK

    owner = subprocess.Popen(["sleep", "60"])
    try:
        busy = in_workspace / "runs/busy"
        busy.mkdir(parents=True)
        (busy / LOCK).write_text(json.dumps({"pid": owner.pid, "host": os.uname().nodename}))
        code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "1", "--out", str(busy)], capsys)
        assert code == 2 and f"in use by process {owner.pid}" in err
    finally:
        owner.kill()
        owner.wait()
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "1", "--out", str(busy)], capsys)
    assert code == 0, err  # the lock's process is gone: taken over


def test_disk_full_is_one_line_and_nothing_is_marked_finished(in_workspace, capsys, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "4", "--out", str(mount / "run")], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "cannot write" in err and "No space left" in err and "Traceback" not in err
        assert not (mount / "run" / "run.json").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _align_rounds(pretrained_run: Path, out: Path, resume: bool = False) -> Path:
    from capalign.train.align import align

    config = build_config(None, Path("tiny.yaml"), {"train": {"checkpoint_every": 1}, "align": {
        "batch_size": 8, "max_steps": 3, "rounds": 2, "pairs": "corrupted", "log_every": 1, "eval_every": 2}})
    return align(pretrained_run, config, out=out, resume=resume)


def _trained(run: Path) -> list[tuple[int, int, float]]:
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["round"], r["step"], r["loss"]) for r in records if "loss" in r]


@pytest.mark.parametrize("stop, at_step", [(KeyboardInterrupt, 2), (RuntimeError, 0)],
                         ids=["interrupted-after-a-round-2-checkpoint", "crashed-before-any-round-2-checkpoint"])
def test_multi_round_alignment_resumes_in_round_two_as_if_never_stopped(pretrained_run, in_workspace, monkeypatch,
                                                                         stop, at_step):
    from safetensors.torch import load_file

    straight = in_workspace / "runs/align-rounds-straight"
    if not (straight / "run.json").is_file():
        _align_rounds(pretrained_run, straight)
    original = Engine._train_batch

    def stop_in_round_two(self, batch, window):
        if self.step_offset and self.state.step == at_step:
            raise stop("stopped in round 2")
        return original(self, batch, window)

    monkeypatch.setattr(Engine, "_train_batch", stop_in_round_two)
    out = in_workspace / f"runs/align-rounds-{at_step}"
    with pytest.raises(SystemExit if stop is KeyboardInterrupt else RuntimeError):
        _align_rounds(pretrained_run, out)
    monkeypatch.setattr(Engine, "_train_batch", original)
    recorded = json.loads((out / "rounds.json").read_text())
    assert (recorded["finished"], recorded["steps"]) == (1, 3) and (out / recorded["policy"]).is_file()
    assert bool(checkpoints.checkpoints_newest_first(out / "checkpoints")) == (stop is KeyboardInterrupt)
    _align_rounds(pretrained_run, out, resume=True)
    assert json.loads((out / "run.json").read_text())["rounds"] == 2
    resumed, reference = _trained(out), _trained(straight)
    assert [(r, s) for r, s, _ in resumed] == [(r, s) for r, s, _ in reference] == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6)]
    assert [loss for *_, loss in resumed] == pytest.approx([loss for *_, loss in reference], rel=1e-6)
    a, b = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    held_out = [json.loads((run / "alignment_report.json").read_text())["held_out_pairs"] for run in (straight, out)]
    assert held_out[1] == pytest.approx(held_out[0], rel=1e-6)  # round 1's held-out pairs, rebuilt on resume
    assert not (out / "rounds.json").exists() and not (out / "rounds").exists()
