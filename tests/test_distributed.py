"""Two CPU processes (torchrun, gloo) give the same loss curve as one process with the same global batch,
and the same captions, each process captioning its share."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY_MODEL


TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
needs_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                                    reason="torchrun is not installed")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@needs_torchrun
def test_two_processes_match_one_process_at_the_same_global_batch(in_workspace):
    config = {"model": {**TINY_MODEL, "dropout": 0.0},  # dropout draws differ per process; everything else is equal
              "train": {"batch_size": 16, "max_steps": 4, "log_every": 1, "eval_every": 100, "checkpoint_every": 100,
                        "select": "none", "lr": 3e-3}}
    (in_workspace / "dist.yaml").write_text(yaml.safe_dump(config))
    env, torchrun = ENV, TORCHRUN
    common = ["pretrain", "--config", "dist.yaml"]
    one = subprocess.run([sys.executable, "-m", "capalign", *common, "--out", "runs/one"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "capalign", *common, "--out", "runs/two"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, "\n".join(l for l in two.stderr.splitlines() if "Warning" not in l)[-6000:]
    single, double = _losses(in_workspace / "runs/one"), _losses(in_workspace / "runs/two")
    assert sorted(single) == sorted(double) == [1, 2, 3, 4]
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-4, abs=1e-5), (step, single, double)
    print("one process:", single, "\ntwo processes:", double)


@needs_torchrun
def test_two_processes_caption_their_shares_and_the_main_process_writes_all_in_order(pretrained_run, in_workspace):
    images = in_workspace / "shard-images"
    images.mkdir()
    for source in sorted((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.png")):
        for copy in ("a", "b"):  # names sort the copies side by side, so each shard holds different images
            shutil.copy(source, images / f"{source.stem}_{copy}.png")
    # --scores: the tiny model's greedy captions may all be alike (even empty); each image's
    # log-probability tells a misordered gather apart.
    common = ["-m", "capalign", "caption", str(images), "--model", str(pretrained_run), "--scores", "--output"]
    one = subprocess.run([sys.executable, *common, "one.jsonl"], env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", *common, "two.jsonl"], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, "\n".join(l for l in two.stderr.splitlines() if "Warning" not in l)[-6000:]
    single = [json.loads(l) for l in (in_workspace / "one.jsonl").read_text().splitlines()]
    double = [json.loads(l) for l in (in_workspace / "two.jsonl").read_text().splitlines()]
    assert len(single) == len(double) == 6 and len({r["image"] for r in single}) == 6
    assert len({round(r["logprob"], 4) for r in single}) == 3  # three different images, two copies each
    for a, b in zip(single, double):  # one row per image, in the same order, with the same greedy caption
        assert (b["image"], b["caption"], b["tokens"]) == (a["image"], a["caption"], a["tokens"])
        assert b["logprob"] == pytest.approx(a["logprob"], abs=1e-5)
    assert two.stdout.count("Wrote 6 captions") == 1  # only the main process reports


@needs_torchrun
def test_two_processes_without_out_write_one_run_folder(workspace, tmp_path):
    """Without --out the main process names the run folder for both: one folder, holding both
    processes' RNG states in its checkpoint (before, rank 1 wrote its own into a second folder)."""
    config = {"model": TINY_MODEL, "train": {"batch_size": 8, "max_steps": 2, "log_every": 1, "eval_every": 100,
                                              "checkpoint_every": 2, "select": "none"}}
    (tmp_path / "dist.yaml").write_text(yaml.safe_dump(config))
    two = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "capalign", "pretrain",
                          "--config", "dist.yaml", "--data", str(workspace / "data" / "shapes")],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, "\n".join(l for l in two.stderr.splitlines() if "Warning" not in l)[-6000:]
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name.startswith("pretrain-") for r in runs] == [True], runs
    assert (runs[0] / "run.json").is_file()


@needs_torchrun
def test_the_others_wait_for_the_main_process_longer_than_the_group_timeout(tmp_path):
    """The feature cache's main-process-first wait outlasts the launch's process-group timeout
    (accelerate's own main_process_first, on that group, is stopped by it)."""
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), ENV.get("PYTHONPATH", "")])}

    def launch(mode: str):
        return subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "patient_first", mode, "3", "8"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    patient = launch("patient")
    assert patient.returncode == 0, patient.stderr[-3000:]
    passed = sorted(tmp_path.glob("passed-*"))
    assert [p.read_text() for p in passed] == ["process 0 passed", "process 1 passed"]
    plain = launch("plain")
    assert plain.returncode != 0 and "Timed out waiting 3000ms" in plain.stderr
