"""`align` on streamed input: SCST reads local webdataset shards and a local dataset with --streaming
(each image with all its references), takes CIDEr-D's document frequencies from the first streamed
samples, validates greedily on the validation shards / split, resumes where the stream was; DPO trains
round N on the stream's N-th window and resumes its round; what a stream cannot feed is one line."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch

from capalign.data.store import load_prepared
from capalign.data import streaming
from capalign.data.stream_sources import open_shards
from capalign.data.streaming import TrainingStream
from capalign.metrics.cider_reward import CiderD
from capalign.train import scst

from stopping import interrupt_at_step
from test_cli import run_cli
from test_streaming import _add, write_parquet_dataset, write_shards

SCST = ["--method", "scst", "--batch-size", "4", "--num-samples", "2", "--log-every", "1", "--eval-every", "2",
        "--val-images", "4", "--checkpoint-every", "1"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _align(pretrained_run: Path, data: str, out: str, *more: str) -> list[str]:
    return ["align", "--model", str(pretrained_run), "--data", data, *SCST, "--out", out, *more]


def test_scst_on_shards_trains_validates_and_writes_a_run(pretrained_run, in_workspace, capsys):
    write_shards(in_workspace / "scst-shards", shards=2, per_shard=6)
    write_shards(in_workspace / "scst-shards", shards=1, per_shard=4, prefix="val-")
    code, out, err = run_cli(_align(pretrained_run, "scst-shards/*.tar", "runs/scst-stream", "--max-steps", "3",
                                    "--sft-weight", "0.5"), capsys)
    assert code == 0, err
    run = in_workspace / "runs/scst-stream"
    records = _records(run)
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3]
    assert all({"reward/mean", "advantage/abs", "kl", "sft_loss"} <= set(r) for r in trained)  # sft: the references
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
    code, _, err = run_cli([*args, "--reward", "cider:1,clipscore:0.5", "--reward-clip", "some/clip"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--reward-clip embeds each dataset image once" in err
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--data", "refuse-shards/000.tar",
                            "--pairs", "pairs.jsonl", "--out", "runs/refused-dpo"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "builds each round's pairs from its window of the stream; use --pairs auto" in err
    assert not (in_workspace / "runs/refused").exists() and not (in_workspace / "runs/refused-dpo").exists()


def test_stream_windows_are_consecutive_and_the_same_for_every_process(tmp_path):
    write_shards(tmp_path / "shards", shards=3, per_shard=3)
    source = open_shards(str(tmp_path / "shards"))["train"]
    stream = TrainingStream(source, seed=3, buffer=2, rank=1, world=2, references=True)  # process 1 of 2
    alone = TrainingStream(source, seed=3, buffer=2, references=True)
    straight = [ref for ref, _, _ in itertools.islice(alone._every_pass(), 12)]  # 9 samples: into pass 2
    windows = [stream.window(i, 4) for i in range(3)]
    assert [w["image_id"] for w in windows] == [straight[0:4], straight[4:8], straight[8:12]]
    assert len(set(straight[:9])) == 9  # one pass: every sample once
    first = windows[0][0]
    assert first["image"].size == (16, 16) and first["captions"][0].startswith("a ")


def test_windows_in_turn_read_the_stream_once_and_a_resumed_window_matches(tmp_path, monkeypatch):
    write_shards(tmp_path / "shards", shards=3, per_shard=3)
    source = open_shards(str(tmp_path / "shards"))["train"]
    decoded = []
    real_decode = streaming.decode_image
    monkeypatch.setattr(streaming, "decode_image", lambda data, size: decoded.append(1) or real_decode(data, size))
    stream = TrainingStream(source, seed=5, buffer=2, references=True)
    windows = [stream.window(i, 4)["image_id"] for i in range(3)]
    assert len(decoded) == 12  # rounds 1-3 decode 12 samples, not 4 + 8 + 12
    resumed = TrainingStream(source, seed=5, buffer=2, references=True).window(2, 4)["image_id"]
    assert resumed == windows[2]
    assert stream.window(1, 4)["image_id"] == windows[1]  # asked out of turn: read again from the start


def _shapes_shards(folder: Path, shards: int, per_shard: int) -> None:
    """Shards of the workspace's shapes training images (what the fixture's model was trained on)."""
    split = load_prepared("data/shapes")["train"]
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            for k in range(per_shard):
                row = split[s * per_shard + k]
                buffer = io.BytesIO()
                row["image"].save(buffer, format="PNG")
                _add(tar, f"{row['image_id']}.png", buffer.getvalue())
                _add(tar, f"{row['image_id']}.txt", row["captions"][0].encode())


def test_dpo_on_shards_trains_each_round_on_the_next_window(pretrained_run, in_workspace, capsys):
    _shapes_shards(in_workspace / "dpo-shards", shards=2, per_shard=6)
    code, out, err = run_cli(["align", "--model", str(pretrained_run), "--data", "dpo-shards", "--rounds", "2",
                              "--stream-window", "6", "--epochs", "1", "--batch-size", "4", "--log-every", "1",
                              "--out", "runs/dpo-stream"], capsys)
    assert code == 0, err
    said = out + err
    assert "Round 1: images 1-6 of the stream." in said and "Round 2: images 7-12 of the stream." in said
    records = _records(in_workspace / "runs/dpo-stream")
    trained = [r for r in records if "loss" in r]
    assert {r["round"] for r in trained} == {1, 2}
    assert all({"rewards/accuracies", "rewards/margins"} <= set(r) for r in trained)
    info = json.loads((in_workspace / "runs/dpo-stream/run.json").read_text())
    assert (info["rounds"], info["data"]) == (2, "dpo-shards")


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


def test_a_window_without_pairs_is_one_line(pretrained_run, in_workspace, capsys):
    write_shards(in_workspace / "tied-shards", shards=1, per_shard=6)  # plain squares: every candidate ties
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--data", "tied-shards", "--stream-window", "6",
                            "--out", "runs/tied"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Round 1: no training pair could be made" in err


def test_interrupted_streamed_dpo_resumes_its_round_and_window(pretrained_run, in_workspace, capsys, monkeypatch):
    from capalign.train.engine import Engine

    _shapes_shards(in_workspace / "rdpo-shards", shards=2, per_shard=6)
    args = ["align", "--model", str(pretrained_run), "--data", "rdpo-shards", "--rounds", "2", "--stream-window", "6",
            "--epochs", "2", "--batch-size", "4", "--log-every", "1", "--checkpoint-every", "1"]
    code, _, err = run_cli([*args, "--out", "runs/rdpo-straight"], capsys)
    assert code == 0, err
    original = Engine._train_batch

    def stop_in_round_two(self, batch, window):
        if self.step_offset and self.state.step == 1:
            raise KeyboardInterrupt
        return original(self, batch, window)

    monkeypatch.setattr(Engine, "_train_batch", stop_in_round_two)
    code, _, err = run_cli([*args, "--out", "runs/rdpo-resumed"], capsys)
    assert code == 130
    monkeypatch.setattr(Engine, "_train_batch", original)
    code, out, err = run_cli([*args, "--out", "runs/rdpo-resumed", "--resume"], capsys)
    assert code == 0, err
    assert "Round 2: images 7-12 of the stream." in out + err
    ours, theirs = _records(in_workspace / "runs/rdpo-resumed"), _records(in_workspace / "runs/rdpo-straight")
    assert [r["step"] for r in ours if "loss" in r] == [r["step"] for r in theirs if "loss" in r]
    for key in ("loss", "rewards/margins"):
        assert [r[key] for r in ours if key in r] == pytest.approx([r[key] for r in theirs if key in r], rel=1e-5)


def test_scst_streams_a_local_hugging_face_dataset_with_streaming(pretrained_run, in_workspace, capsys):
    write_parquet_dataset(in_workspace / "hf-align")
    code, out, err = run_cli(_align(pretrained_run, "hf-align", "runs/scst-hf", "--streaming", "--max-steps", "2"), capsys)
    assert code == 0, err
    assert "the first 3 samples" in out + err  # the validation split, held in memory
    assert "first 12 streamed samples" in out + err  # the df: both train files' rows
    records = _records(in_workspace / "runs/scst-hf")
    assert [r["step"] for r in records if "reward/mean" in r] == [1, 2]
    assert [r["step"] for r in records if "val_cider" in r] == [2]
