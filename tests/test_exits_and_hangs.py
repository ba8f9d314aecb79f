"""Hangs and wrong exits: diverged training stops with one line, Ctrl-C is 130 everywhere, resume
checks the run kind, evaluate refuses zero images, decoding limits are one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from capalign.config import TrainConfig, build_config
from capalign.errors import ConfigError
from capalign.train import checkpoints
from capalign.train.engine import MAX_CONSECUTIVE_NONFINITE, Engine
from capalign.train.pretrain import pretrain
from capalign.train.stages import STAGE

from stopping import interrupt_at_step, sigint_as_at_a_terminal
from test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "images" / "red_circle.png"


def _one_line(code: int, err: str, status: int) -> None:
    """The house standard for a refused or interrupted command."""
    assert code == status, err
    assert "Traceback" not in err
    assert 1 <= len(err.strip().splitlines()) <= 3, err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 5: diverged training ends


def test_pretrain_with_a_huge_learning_rate_stops_as_diverged(in_workspace, capsys):
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--lr", "1e30", "--max-steps", "4",
                            "--out", "runs/diverged"], capsys)
    _one_line(code, err, 2)
    assert "training diverged" in err and f"{MAX_CONSECUTIVE_NONFINITE} consecutive non-finite" in err
    assert "--lr" in err
    assert not (in_workspace / "runs/diverged/run.json").exists()  # not marked finished


def test_align_with_a_huge_lr_stops_as_diverged(pretrained_run, in_workspace, capsys):
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--config", "tiny.yaml", "--lr", "1e30",
                            "--max-steps", "4", "--rounds", "1", "--pairs", "corrupted", "--batch-size", "2",
                            "--out", "runs/diverged-align"], capsys)
    _one_line(code, err, 2)
    assert "training diverged" in err and "--beta" in err
    assert not (in_workspace / "runs/diverged-align/run.json").exists()


def _toy(tmp_path: Path, loss_fn, **settings) -> Engine:
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    data = [torch.tensor([float(i), 1.0]) for i in range(8)]
    config = TrainConfig(lr=0.1, batch_size=2, log_every=1, eval_every=100, **settings)
    return Engine(module, loss_fn, data, lambda xs: {"x": torch.stack(xs)}, config, tmp_path)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    def loss_fn(model, batch):  # finite for two steps, then NaN for ever
        loss = model(batch["x"]).pow(2).mean()
        return (loss if engine.state.step < 2 else loss * float("nan")), {}

    engine = _toy(tmp_path, loss_fn, max_steps=10, checkpoint_every=2)
    with pytest.raises(ConfigError, match="consecutive non-finite losses at step 2") as stopped:
        engine.fit()
    good = tmp_path / "checkpoints" / "step-00000002"
    assert str(good) in str(stopped.value)
    assert checkpoints.damage(good) is None
    assert engine.state.skipped_nonfinite == MAX_CONSECUTIVE_NONFINITE


def test_non_finite_weights_are_never_saved_over_the_good_checkpoint(tmp_path):
    def loss_fn(model, batch):
        if engine.state.step == 3:  # an update that left the bias NaN while the loss still reads finite
            with torch.no_grad():
                model.bias.fill_(float("nan"))
        return model.weight.pow(2).sum(), {}

    engine = _toy(tmp_path, loss_fn, max_steps=10, checkpoint_every=2)
    original = engine.save_checkpoint
    saved = {}

    def remember(*args):
        path = original(*args)
        saved.update(_snapshot(path.parent))
        return path

    engine.save_checkpoint = remember
    with pytest.raises(ConfigError, match="weights are no longer finite at step 4"):
        engine.fit()
    assert _snapshot(tmp_path / "checkpoints") == saved  # step 2's checkpoint, byte for byte; no step 4


def test_max_steps_zero_is_refused(in_workspace, capsys):
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "0", "--out", "runs/zero"], capsys)
    _one_line(code, err, 2)
    assert "--max-steps must be positive" in err
    assert not (in_workspace / "runs/zero").exists()


# ---------------------------------------------------------------- 6: Ctrl-C is 130 and one line


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_caption(pretrained_run, in_workspace, monkeypatch, capsys):
    monkeypatch.setattr("capalign.data.images.collect_images", _interrupt)
    code, _, err = run_cli(["caption", str(IMAGE), "--model", str(pretrained_run)], capsys)
    _one_line(code, err, 130)
    assert "interrupted" in err


def test_ctrl_c_in_evaluate_metric_computation(pretrained_run, in_workspace, monkeypatch, capsys):
    card = (pretrained_run / "README.md").read_bytes()
    monkeypatch.setattr("capalign.api.score_system", _interrupt)
    code, _, err = run_cli(["evaluate", "--model", str(pretrained_run), "--metrics", "bleu", "--output", "e.json"], capsys)
    _one_line(code, err, 130)
    assert not (in_workspace / "e.json").exists() and (pretrained_run / "README.md").read_bytes() == card


def test_ctrl_c_in_fetch(in_workspace, monkeypatch, capsys):
    monkeypatch.setattr("capalign.data.store.prepare_shapes", _interrupt)
    code, _, err = run_cli(["fetch", "shapes", "--out", "fetched-interrupted"], capsys)
    _one_line(code, err, 130)


def test_sigterm_in_fetch_is_143_and_one_line(in_workspace, monkeypatch, capsys):
    def terminated(*args, **kwargs):
        # without capalign's handler the signal would end the test session itself: fail instead
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the handler interrupts this at once

    monkeypatch.setattr("capalign.data.store.prepare_shapes", terminated)
    handler = signal.getsignal(signal.SIGTERM)
    code, _, err = run_cli(["fetch", "shapes", "--out", "fetched-terminated"], capsys)
    _one_line(code, err, 128 + signal.SIGTERM)
    assert "SIGTERM" in err
    assert signal.getsignal(signal.SIGTERM) is handler  # restored after the command


def test_ctrl_c_in_align_pair_building(pretrained_run, in_workspace, monkeypatch, capsys):
    monkeypatch.setattr("capalign.train.align.build_pair_sets", _interrupt)
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--out", "runs/align-interrupted"], capsys)
    _one_line(code, err, 130)
    assert not (in_workspace / "runs/align-interrupted/run.json").exists()


def test_ctrl_c_in_pretrain_start_up(in_workspace, monkeypatch, capsys):
    monkeypatch.setattr("capalign.train.pretrain.build_run", _interrupt)
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--out", "runs/startup-interrupted"], capsys)
    _one_line(code, err, 130)


def test_ctrl_c_stops_the_whole_demo(in_workspace, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("capalign.train.pretrain.build_run", _interrupt)
    later = []
    monkeypatch.setattr("capalign.train.align.align", lambda *a, **k: later.append("align"))
    code, _, err = run_cli(["demo", "--workdir", str(tmp_path / "demo")], capsys)
    _one_line(code, err, 130)
    assert later == []  # the steps after the interrupted one did not run


def test_a_real_sigint_to_caption_is_130_and_one_line(pretrained_run, in_workspace):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "capalign", "caption", str(IMAGE), "--model", str(pretrained_run)],
                               cwd=in_workspace, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=sigint_as_at_a_terminal)
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.time() + 120
    # torch loads inside the command (its imports are deferred): from then on the command is running
    while process.poll() is None and time.time() < deadline and "libtorch" not in maps.read_text(errors="replace"):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=120)
    err = process.stderr.read()
    _one_line(code, err, 130)
    assert "interrupted" in err


# ---------------------------------------------------------------- 7: resume checks the run kind


def _interrupted_pretrain(out: Path, monkeypatch) -> None:
    config = build_config(None, Path("tiny.yaml"), {"train": {"max_steps": 8, "checkpoint_every": 2, "eval_every": 100,
                                                              "log_every": 1}})
    resume_normally = interrupt_at_step(monkeypatch, 4)
    with pytest.raises(SystemExit):
        pretrain(config, out)
    resume_normally()


@pytest.mark.parametrize("older_version", [False, True])
def test_align_resume_refuses_an_interrupted_pretrain_run(pretrained_run, in_workspace, monkeypatch, capsys, older_version):
    out = in_workspace / f"runs/pre-interrupted-{older_version}"
    _interrupted_pretrain(out, monkeypatch)
    if older_version:  # a folder from before the stage was recorded: told by its metrics
        (out / STAGE).unlink()
    before = _snapshot(out)
    capsys.readouterr()
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--resume", "--out", str(out)], capsys)
    _one_line(code, err, 2)
    assert "interrupted pretrain run" in err and "capalign pretrain --resume" in err
    assert _snapshot(out) == before


def test_pretrain_resume_refuses_an_interrupted_align_run(pretrained_run, in_workspace, capsys):
    out = in_workspace / "runs/align-half-done"
    out.mkdir(parents=True)
    shutil.copy(pretrained_run / "capalign.yaml", out / "capalign.yaml")
    (out / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 0.6, "rewards/chosen": 0.1}) + "\n")
    before = _snapshot(out)
    code, _, err = run_cli(["pretrain", "--resume", "--out", str(out), "--max-steps", "8"], capsys)
    _one_line(code, err, 2)
    assert "interrupted align run" in err and "capalign align --resume" in err
    assert _snapshot(out) == before


@pytest.mark.parametrize("command", ["pretrain", "align"])
def test_resume_into_a_folder_that_does_not_exist_is_refused(pretrained_run, in_workspace, capsys, command):
    out = in_workspace / "runs/never-started"
    extra = ["--model", str(pretrained_run)] if command == "align" else []
    code, _, err = run_cli([command, "--resume", "--out", str(out), "--max-steps", "2", *extra], capsys)
    _one_line(code, err, 2)
    assert "does not exist" in err and not out.exists()


# ---------------------------------------------------------------- 9: evaluate over nothing, read-only runs


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_evaluate_limit_below_one_is_refused(pretrained_run, in_workspace, capsys, limit):
    before = _snapshot(pretrained_run)
    code, _, err = run_cli(["evaluate", "--model", str(pretrained_run), "--limit", limit, "--metrics", "bleu"], capsys)
    _one_line(code, err, 2)
    assert "--limit must be at least 1" in err
    assert _snapshot(pretrained_run) == before


def test_evaluate_an_empty_split_is_refused(pretrained_run, in_workspace, capsys):
    from datasets import load_from_disk

    data = load_from_disk(str(in_workspace / "data/shapes"))
    data["test"] = data["test"].filter(lambda record: False)  # saved as one empty shard, as an import can leave it
    data.save_to_disk(str(in_workspace / "data/empty-test"), num_shards={name: 1 for name in data})
    before = _snapshot(pretrained_run)
    capsys.readouterr()
    code, _, err = run_cli(["evaluate", "--model", str(pretrained_run), "--data", "data/empty-test", "--metrics", "bleu"], capsys)
    _one_line(code, err, 2)
    assert "split 'test' of data/empty-test holds no images" in err
    assert _snapshot(pretrained_run) == before


def test_evaluate_a_read_only_run_still_reports_its_scores(pretrained_run, in_workspace, monkeypatch, capsys):
    from capalign.runs import write_errors

    def read_only(path, text):
        with write_errors(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("capalign.model_card.atomic_write_text", read_only)
    before = _snapshot(pretrained_run)
    code, out, err = run_cli(["evaluate", "--model", str(pretrained_run), "--metrics", "bleu", "--output", "ro.json"], capsys)
    assert code == 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "not recorded" in err and "Read-only" in err
    assert "BLEU-4" in out
    assert "BLEU-4" in json.loads((in_workspace / "ro.json").read_text())["metrics"]
    assert _snapshot(pretrained_run) == before


# ---------------------------------------------------------------- decoding limits


@pytest.mark.parametrize("option, value, named", [
    ("--max-length", "100000", "--max-length must be between 1 and"),
    ("--num-beams", "1000000", "--num-beams must be between 1 and"),
    ("--temperature", "nan", "--temperature must be a number at least 0"),
    ("--temperature", "inf", "--temperature must be a number at least 0"),
])
def test_caption_decoding_limits(pretrained_run, in_workspace, capsys, option, value, named):
    code, _, err = run_cli(["caption", str(IMAGE), "--model", str(pretrained_run), option, value], capsys)
    _one_line(code, err, 2)
    assert named in err


@pytest.mark.parametrize("option, value", [("--max-length", "100000"), ("--num-beams", "1000000")])
def test_evaluate_decoding_limits(pretrained_run, in_workspace, capsys, option, value):
    before = _snapshot(pretrained_run)
    code, _, err = run_cli(["evaluate", "--model", str(pretrained_run), "--metrics", "bleu", option, value], capsys)
    _one_line(code, err, 2)
    assert f"{option} must be between 1 and" in err
    assert _snapshot(pretrained_run) == before


def test_the_python_api_checks_decoding_limits(pretrained_run):
    from capalign import Captioner

    captioner = Captioner.from_pretrained(pretrained_run, device="cpu")
    positions = captioner.module.model.decoder.config.max_position_embeddings
    assert isinstance(captioner.caption(str(IMAGE), max_length=positions - 1), str)  # the longest allowed
    for kwargs, named in [({"max_length": positions}, "--max-length"), ({"temperature": float("nan")}, "--temperature"),
                          ({"num_beams": 10**6}, "--num-beams")]:
        with pytest.raises(ConfigError, match=named):
            captioner.caption(str(IMAGE), **kwargs)
