"""`align` on streamed input: SCST reads local webdataset shards (each image with all its references),
takes CIDEr-D's document frequencies from the first streamed samples, validates greedily on the
validation shards, resumes where the stream was; what a stream cannot feed is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from capalign.data.stream_sources import open_shards
from capalign.data.streaming import TrainingStream
from capalign.metrics.cider_reward import CiderD
from capalign.train import scst

from stopping import interrupt_at_step
from test_cli import run_cli
from test_streaming import write_shards

SCST = ["--method", "scst", "--batch-size", "4", "--num-samples", "2", "--log-every", "1", "--eval-every", "2",
        "--val-images", "4", "--checkpoint-every", "1"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _align(pretrained_run: Path, data: str, out: str, *more: str) -> list[str]:
    return ["align", "--model", str(pretrained_run), "--data", data, *SCST, "--out", out, *more]


def test_scst_on_shards_trains_validates_and_writes_a_run(pretrained_run, in_workspace, capsys):
    write_shards(in_workspace / "scst-shards", shards=2, per_shard=6)
    write_shards(in_workspace / "scst-shards", shards=1, per_shard=4, prefix="val-")
    code, out, err = run_cli(_align(pretrained_run, "scst-shards/*.tar", "runs/scst-stream", "--max-steps", "3"), capsys)
    assert code == 0, err
    run = in_workspace / "runs/scst-stream"
    records = _records(run)
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3]
    assert all({"reward/mean", "advantage/abs", "kl"} <= set(r) for r in trained)
    assert all(0.0 <= r["reward/mean"] <= 10.0 for r in trained)  # CIDEr-D's range
    assert [r["step"] for r in records if "val_cider" in r] == [2, 3]
    info = json.loads((run / "run.json").read_text())
    assert (info["method"], info["steps"], info["data"]) == ("scst", 3, "scst-shards/*.tar")
    assert "first 12 streamed samples" in err + out  # the df's source is said (2 train shards x 6)


def test_document_frequencies_are_the_first_streamed_samples_references(tmp_path, monkeypatch):
    write_shards(tmp_path / "shards", shards=3, per_shard=4)
    stream = TrainingStream(open_shards(str(tmp_path / "shards"))["train"], seed=0, buffer=2, references=True)
    monkeypatch.setattr(scst, "STREAM_DF_SAMPLES", 5)
    reward = scst.cider_reward(scst.RewardContext(stream, None, None, None))
    first = [[f"a {c} square 0 {k}"] for k, c in enumerate(["red", "green", "blue", "yellow"])] + [["a white square 1 0"]]
    refs, captions = [["a red square 2 3"], ["a blue square 0 1"]], ["a red square 2 3", "a red square 0 1"]
    got = reward([0, 1], torch.arange(2), captions, None, refs).tolist()
    expected = CiderD(first).scores_against(refs, captions)
    assert got == pytest.approx(expected, rel=1e-6)  # float32 rewards
    all_twelve = CiderD([r for r in stream.reference_sets(12)]).scores_against(refs, captions)
    assert got != pytest.approx(all_twelve, rel=1e-3)  # the df really are the first five's
    # against references it was built on, scores_against is the scorer's own score
    built = CiderD(first)
    assert built.scores_against([first[2]], ["a blue square"]) == pytest.approx(built.scores([2], ["a blue square"]))
    # and its samples carry every caption: an image with all its references
    image, references = next(iter(stream))
    assert image.size == (16, 16) and isinstance(references, list) and references[0].startswith("a ")


def test_rewards_a_stream_cannot_feed_are_refused_in_one_line(pretrained_run, in_workspace, capsys):
    write_shards(in_workspace / "refuse-shards", shards=1, per_shard=2)
    args = _align(pretrained_run, "refuse-shards/000.tar", "runs/refused", "--max-steps", "2")
    code, _, err = run_cli([*args, "--reward", "cider:1,hallucination:-1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "ground-truth objects, which a streamed source does not carry" in err
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--data", "refuse-shards/000.tar",
                            "--max-steps", "2", "--out", "runs/refused-dpo"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "DPO on a streamed source is not supported yet; use --method scst or fetch the data first" in err
    assert not (in_workspace / "runs/refused").exists() and not (in_workspace / "runs/refused-dpo").exists()


def test_interrupted_streamed_scst_resumes_where_the_stream_was(pretrained_run, in_workspace, capsys, monkeypatch):
    write_shards(in_workspace / "resume-shards", shards=3, per_shard=4)
    data = "resume-shards/{000..002}.tar"
    code, _, err = run_cli(_align(pretrained_run, data, "runs/sstream-straight", "--max-steps", "4"), capsys)
    assert code == 0, err
    resume_normally = interrupt_at_step(monkeypatch, 2)
    code, _, err = run_cli(_align(pretrained_run, data, "runs/sstream-resumed", "--max-steps", "4"), capsys)
    assert code == 130
    resume_normally()
    code, _, err = run_cli(_align(pretrained_run, data, "runs/sstream-resumed", "--max-steps", "4", "--resume"), capsys)
    assert code == 0, err
    ours, theirs = _records(in_workspace / "runs/sstream-resumed"), _records(in_workspace / "runs/sstream-straight")
    assert [r["step"] for r in ours if "loss" in r] == [r["step"] for r in theirs if "loss" in r] == [1, 2, 3, 4]
    for key in ("loss", "reward/mean", "kl"):
        assert [r[key] for r in ours if key in r] == pytest.approx([r[key] for r in theirs if key in r], rel=1e-5)
