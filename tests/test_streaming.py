"""Streaming training input: pretrain reads local webdataset shards and a local Hugging Face dataset
in streaming mode, unprepared; shares partition the samples; an interrupted run resumes where the
stream was."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from capalign.data.stream_sources import ShardSource, open_shards
from capalign.data.streaming import TrainingStream

from stopping import interrupt_at_step
from test_cli import run_cli

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
TINY = ["--config", "tiny.yaml", "--batch-size", "4"]


def _png(colour: str, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, shards: int = 3, per_shard: int = 8, bad: bool = False, prefix: str = "") -> list[str]:
    """`shards` tar shards of tiny PNGs with .txt captions; returns the sample keys. `bad`: the last
    shard also holds a non-image member and an image without a caption."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(shards):
        with tarfile.open(folder / f"{prefix}{s:03d}.tar", "w") as tar:
            for k in range(per_shard):
                key = f"s{s}-{k:03d}"
                colour = COLOURS[(s * per_shard + k) % len(COLOURS)]
                _add(tar, f"{key}.png", _png(colour))
                _add(tar, f"{key}.txt", f"a {colour} square {s} {k}".encode())  # unique: tests compare orders
                keys.append(key)
            if bad and s == shards - 1:
                _add(tar, "broken.png", b"this is not an image")
                _add(tar, "broken.txt", b"a broken square")
                _add(tar, "silent.png", _png("red"))
    return keys


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_pretrain_streams_local_shards_into_a_loadable_run(in_workspace, capsys):
    write_shards(in_workspace / "shards", bad=True)
    whole = (in_workspace / "shards/000.tar").read_bytes()
    (in_workspace / "shards/003.tar").write_bytes(whole[: len(whole) // 2 + 100])  # cut mid-member
    code, out, err = run_cli(["pretrain", "--data", "shards/{000..003}.tar", *TINY, "--max-steps", "7",
                              "--out", "runs/streamed"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "broken" in err and "silent" in err and "003.tar" in err  # skipped and named, not fatal
    assert "no validation metrics" in out
    run = in_workspace / "runs/streamed"
    assert sorted(_losses(run)) == [2, 4, 6, 7]  # 28 samples: the whole first pass (24 usable) and more
    image = in_workspace / "streamed-photo.png"
    image.write_bytes(_png("blue", 64))
    code, out, err = run_cli(["caption", str(image), "--model", str(run), "--output", "streamed-caps.json"], capsys)
    assert code == 0, err
    captions = json.loads((in_workspace / "streamed-caps.json").read_text())
    assert isinstance(captions[0]["caption"], str)


def test_missing_max_steps_is_refused_in_one_line(in_workspace, capsys):
    write_shards(in_workspace / "shards", shards=1, per_shard=2)
    code, out, err = run_cli(["pretrain", "--data", "shards/000.tar", *TINY, "--out", "runs/no-steps"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--max-steps" in lines[0] and "Traceback" not in err
    assert not (in_workspace / "runs/no-steps").exists()


def test_shards_without_a_usable_sample_are_one_line(in_workspace, capsys):
    (in_workspace / "junk").mkdir(exist_ok=True)
    (in_workspace / "junk/000.tar").write_bytes(b"not a tar file at all" * 40)
    code, _, err = run_cli(["pretrain", "--data", "junk/000.tar", *TINY, "--max-steps", "2", "--out", "runs/junk"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("capalign: error:") and "no usable sample" in err
    code, _, err = run_cli(["pretrain", "--data", "absent/{000..002}.tar", *TINY, "--max-steps", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "absent" in err


def _share_refs(source, shares: int, passes=(0,)) -> list[list[str]]:
    stream = TrainingStream(source, seed=3, buffer=4, name="test")
    return [[ref for p in passes for ref, _, _ in stream.share_samples(share, shares, p)] for share in range(shares)]


@pytest.mark.parametrize("shards,shares", [(3, 2), (4, 4), (2, 3)])
def test_shares_partition_the_samples(tmp_path, shards, shares):
    """(process, worker) shares: with more shards than shares whole shards go round-robin, with fewer
    every share keeps every n-th sample; either way no sample twice and none left out."""
    keys = write_shards(tmp_path / "shards", shards=shards, per_shard=5)
    source = open_shards(str(tmp_path / "shards"))["train"]
    parts = _share_refs(source, shares)
    seen = [ref.split(":")[1] for part in parts for ref in part]
    assert sorted(seen) == sorted(keys)
    assert all(parts)


def test_process_and_worker_shares_cover_each_pass(tmp_path):
    """Two processes x two workers: rank r, worker w is share 2r + w of 4."""
    keys = write_shards(tmp_path / "shards", shards=5, per_shard=3)
    source = ShardSource(sorted((tmp_path / "shards").glob("*.tar")))
    for pass_ in (0, 1):
        seen = []
        for rank in (0, 1):
            stream = TrainingStream(source, seed=0, buffer=2, rank=rank, world=2)
            for worker in (0, 1):
                seen += [ref for ref, _, _ in stream.share_samples(rank * 2 + worker, 4, pass_)]
        assert sorted(ref.split(":")[1] for ref in seen) == sorted(keys)


def test_resume_skips_exactly_the_trained_batches(tmp_path):
    write_shards(tmp_path / "shards", shards=2, per_shard=6)
    source = open_shards(str(tmp_path / "shards"))["train"]
    straight = [caption for _, caption in _take(TrainingStream(source, seed=1, buffer=3), 20)]
    resumed = TrainingStream(source, seed=1, buffer=3)
    resumed.resume_after(3, 4)  # 3 batches of 4 trained on
    assert [caption for _, caption in _take(resumed, 8)] == straight[12:20]


def _take(stream, n: int) -> list:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_interrupted_streamed_run_resumes_as_if_uninterrupted(in_workspace, capsys, monkeypatch):
    write_shards(in_workspace / "rshards", shards=3, per_shard=6)
    args = ["pretrain", "--data", "rshards/{000..002}.tar", *TINY, "--max-steps", "8"]
    code, _, err = run_cli([*args, "--out", "runs/stream-straight"], capsys)
    assert code == 0, err

    resume_normally = interrupt_at_step(monkeypatch, 4)
    code, _, err = run_cli([*args, "--out", "runs/stream-resumed"], capsys)
    assert code == 130
    resume_normally()
    code, _, err = run_cli([*args, "--out", "runs/stream-resumed", "--resume"], capsys)
    assert code == 0, err
    straight, resumed = _losses(in_workspace / "runs/stream-straight"), _losses(in_workspace / "runs/stream-resumed")
    assert sorted(resumed) == sorted(straight) == [2, 4, 6, 8]
    for step in (6, 8):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5)


def write_parquet_dataset(folder: Path) -> None:
    """A local dataset `load_dataset` streams: two train files and one validation file (parquet)."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    for name, rows in (("train-00000-of-00002", 6), ("train-00001-of-00002", 6), ("validation-00000-of-00001", 3)):
        colours = [COLOURS[i % len(COLOURS)] for i in range(rows)]
        datasets.Dataset.from_dict({"image": [{"bytes": _png(c), "path": None} for c in colours],
                                    "caption": [f"a {c} square" for c in colours]},
                                   features=features).to_parquet(str(folder / f"{name}.parquet"))


def test_pretrain_streams_a_local_hugging_face_dataset_with_its_validation_split(in_workspace, capsys):
    import yaml

    from conftest import TINY_MODEL

    write_parquet_dataset(in_workspace / "hf-local")
    config = {"model": TINY_MODEL, "train": {"streaming": True, "batch_size": 4, "log_every": 2, "eval_every": 2,
                                             "checkpoint_every": 100, "select": "none"}}
    (in_workspace / "streaming.yaml").write_text(yaml.safe_dump(config))  # --streaming once the flags are generated
    code, out, err = run_cli(["pretrain", "--data", "hf-local", "--config", "streaming.yaml", "--max-steps", "4",
                              "--out", "runs/hf-streamed"], capsys)
    assert code == 0, err
    assert "the first 3 samples" in out
    records = [json.loads(line) for line in (in_workspace / "runs/hf-streamed/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert sorted(r["step"] for r in records if "loss" in r) == [2, 4]


def test_streaming_a_missing_dataset_is_one_line(in_workspace, capsys):
    import yaml

    (in_workspace / "streaming-only.yaml").write_text(yaml.safe_dump({"train": {"streaming": True}}))
    code, _, err = run_cli(["pretrain", "--data", "no-such-folder", "--config", "streaming-only.yaml",
                            "--max-steps", "2", "--out", "runs/never"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no-such-folder" in err
    assert not (in_workspace / "runs/never").exists()


def test_shards_named_validation_are_held_out_of_training(tmp_path):
    write_shards(tmp_path / "shards", shards=2, per_shard=3, prefix="train-")
    write_shards(tmp_path / "shards", shards=1, per_shard=2, prefix="val-")
    write_shards(tmp_path / "shards", shards=1, per_shard=2, prefix="test-")
    sources = open_shards(str(tmp_path / "shards" / "*.tar"))
    assert [p.name for p in sources["train"].shards] == ["train-000.tar", "train-001.tar"]
    assert [p.name for p in sources["validation"].shards] == ["val-000.tar"]


def test_loader_workers_resume_where_the_stream_was(tmp_path):
    """With DataLoader workers (CUDA runs), batch i comes from worker i mod W: a loader resumed after
    k batches yields what an uninterrupted one yields from batch k on."""
    from torch.utils.data import DataLoader

    write_shards(tmp_path / "shards", shards=4, per_shard=5)
    source = open_shards(str(tmp_path / "shards"))["train"]

    def batches(skip: int, n: int) -> list[list[str]]:
        stream = TrainingStream(source, seed=2, buffer=3)
        stream.resume_after(skip, 3)
        loader = DataLoader(stream, batch_size=3, num_workers=2, collate_fn=lambda items: [c for _, c in items])
        it = iter(loader)
        return [next(it) for _ in range(n)]

    straight = batches(0, 9)
    assert batches(5, 4) == straight[5:9]


def test_a_loader_workers_error_stays_one_line(tmp_path):
    from torch.utils.data import DataLoader

    from capalign.data.streaming import worker_errors
    from capalign.errors import InputError

    for name in ("0.tar", "1.tar"):
        (tmp_path / name).write_bytes(b"not a tar file at all" * 40)
    stream = TrainingStream(ShardSource(sorted(tmp_path.glob("*.tar"))), seed=0, buffer=2, name="junk")
    loader = DataLoader(stream, batch_size=2, num_workers=2, collate_fn=list)
    with pytest.raises(InputError) as raised, worker_errors():
        next(iter(loader))
    assert "\n" not in str(raised.value) and "holds no usable sample" in str(raised.value)
