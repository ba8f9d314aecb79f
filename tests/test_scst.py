"""`align --method scst`: the reward specification, the rewards, and SCST training through the engine."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from PIL import Image

from capalign.config import build_config, parse_reward
from capalign.errors import ConfigError, MissingError
from capalign.train import scst
from capalign.train.align import align

from stopping import interrupt_at_step
from test_cli import run_cli

SCST_KEYS = {"loss", "reward/mean", "reward/std", "advantage/mean", "advantage/abs", "kl", "length"}


def _scst(pretrained_run: Path, out: Path, resume: bool = False, **options) -> Path:
    settings = {"method": "scst", "batch_size": 8, "num_samples": 4, "max_steps": 3, "log_every": 1, "eval_every": 2,
                **options}
    config = build_config(None, pretrained_run.parent.parent / "tiny.yaml", {"train": {"checkpoint_every": 1}, "align": settings})
    return align(pretrained_run, config, out=out, resume=resume)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_reward_specs_parse_to_weights():
    assert parse_reward("cider") == {"cider": 1.0}
    assert parse_reward("cider:1,clipscore:0.5") == {"cider": 1.0, "clipscore": 0.5}
    assert parse_reward(" cider:1 , hallucination:-1 ") == {"cider": 1.0, "hallucination": -1.0}


@pytest.mark.parametrize("args, message", [
    (["--reward", "bleu"], "unknown term 'bleu'"),
    (["--reward", "cider:much"], "must be a number"),
    (["--reward", "cider:1,cider:2"], "appears twice"),
    (["--reward", "cider:0"], "finite non-zero"),
    (["--reward", "cider:nan"], "finite non-zero"),
    (["--reward", ""], "unknown term ''"),
    (["--method", "ppo"], "--method must be one of dpo, scst"),
    (["--baseline", "median"], "--baseline must be one of mean, greedy"),
    (["--num-samples", "1"], "--num-samples must be at least 2 with --baseline mean"),
    (["--method", "dpo", "--beta", "0"], "--beta must be positive"),  # 0 is "off" only for scst
    (["--beta", "-1", "--method", "scst"], "--beta must be positive"),
])
def test_bad_scst_options_exit_2_with_one_line(in_workspace, capsys, args, message):
    code, _, err = run_cli(["align", "--method", "scst", *args] if "--method" not in args else ["align", *args], capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_rewards_that_cannot_be_computed_are_refused_saying_why():
    natural = Dataset.from_dict({"captions": [["a dog on a sofa"]]})
    with pytest.raises(ConfigError, match="needs each image's ground-truth objects"):
        scst.hallucination_reward(scst.RewardContext(natural, None, None, None))
    with pytest.raises(ConfigError, match="needs a run with a contrastive head"):
        scst.clipscore_reward(scst.RewardContext(natural, SimpleNamespace(head=None), None, None))


def test_clipscore_reward_by_a_clip_model_is_clip_s_embedding_each_image_once(tmp_path, monkeypatch):
    from transformers import AutoProcessor, CLIPModel

    from capalign.metrics.clipscore import load_clip
    from tiny_backbones import build_tiny_backbones

    clip = build_tiny_backbones(tmp_path)["clip"]
    images = [Image.new("RGB", (40, 40), colour) for colour in ((200, 10, 10), (10, 10, 200))]
    split = Dataset.from_dict({"image": images, "captions": [["a red circle"], ["a blue square"]]})
    reward = scst.clipscore_reward(scst.RewardContext(split, None, None, None, str(clip)))
    scorer, embedded = load_clip(str(clip)), []
    original = scorer.embed_images
    monkeypatch.setattr(scorer, "embed_images", lambda batch: embedded.append(len(batch)) or original(batch))
    rows, captions = [0, 0, 1], ["a red circle", "a cat", "a blue square"]
    got = reward(rows, None, captions, None)
    reward(rows, None, captions, None)  # the same images again: nothing embedded twice
    model, processor = CLIPModel.from_pretrained(clip).eval(), AutoProcessor.from_pretrained(clip)
    with torch.no_grad():
        image = model.get_image_features(**processor(images=[images[r] for r in rows], return_tensors="pt"))
        text = model.get_text_features(**processor(text=[f"A photo depicts {c}" for c in captions], padding=True,
                                                   return_tensors="pt"))
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))
    cos = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    assert torch.allclose(got, 2.5 * cos.clamp(min=0), atol=1e-5)
    assert embedded == [2]


def test_a_clip_model_that_is_not_here_is_one_line(tmp_path):
    split = Dataset.from_dict({"captions": [["a dog"]]})
    with pytest.raises(MissingError, match="CLIP model 'nobody/no-such-clip' is not on this machine"):
        scst.clipscore_reward(scst.RewardContext(split, None, None, None, "nobody/no-such-clip"))


def test_hallucination_reward_counts_hallucinated_mentions():
    objects = [[{"shape": "square", "colour": "red", "size": "small", "position": "left"}]]
    split = Dataset.from_dict({"captions": [["a small red square"]], "objects": objects})
    reward = scst.hallucination_reward(scst.RewardContext(split, None, None, None))
    counts = reward([0, 0, 0], torch.zeros(3, dtype=torch.long), ["a red square", "a blue circle", "a blue circle and a green triangle"], None)
    assert counts.tolist() == [0.0, 1.0, 2.0]


def test_sample_labels_keep_the_first_eos_and_mask_what_follows():
    sequences = torch.tensor([[9, 5, 6, 2, 2, 2], [9, 5, 2, 7, 2, 0], [9, 5, 6, 7, 8, 4]])
    labels = scst.sample_labels(sequences, prompt=1, eos=2)
    assert labels.tolist() == [[5, 6, 2, -100, -100], [5, 2, -100, -100, -100], [5, 6, 7, 8, 4]]


def test_scst_run_logs_its_metrics_and_is_a_finished_model(pretrained_run, in_workspace, capsys):
    run = _scst(pretrained_run, Path("runs/scst-basic"), baseline="greedy", reward="cider:1,hallucination:-1")
    records = _records(run)
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3]
    assert all(SCST_KEYS | {"reward/cider", "reward/hallucination"} <= set(r) for r in trained)
    assert [r["step"] for r in records if "val_cider" in r] == [2, 3]
    info = json.loads((run / "run.json").read_text())
    assert (info["kind"], info["method"], info["baseline"], info["steps"]) == ("align", "scst", "greedy", 3)
    assert not (run / "checkpoints").exists() and (run / "curves.png").is_file()
    card = (run / "README.md").read_text()
    assert "self-critical sequence training (SCST, reward cider:1,hallucination:-1)" in card
    assert "baseline greedy" in card and "- scst" in card and "DPO" not in card
    Image.new("RGB", (64, 64), "white").save(in_workspace / "blank.png")
    code, out, err = run_cli(["caption", "blank.png", "--model", str(run)], capsys)
    assert code == 0 and "Traceback" not in err


def test_a_reward_for_one_word_is_learned(pretrained_run, in_workspace, monkeypatch):
    # a test-only reward: how many times the caption says "red"; a real optimisation, not a smoke test
    def red(context):
        return lambda rows, positions, captions, pixels, references=None: torch.tensor([float(c.split().count("red")) for c in captions])

    monkeypatch.setitem(scst.REWARD_BUILDERS, "cider", red)
    run = _scst(pretrained_run, Path("runs/scst-red"), max_steps=10, num_samples=6, lr=5e-3, beta=0.0,
                contrastive_weight=0.0, eval_every=100)
    rewards = [r["reward/mean"] for r in _records(run) if "reward/mean" in r]
    assert sum(rewards[-3:]) / 3 > 2 * max(sum(rewards[:3]) / 3, 0.05), rewards


def test_interrupted_scst_resumes_as_if_never_stopped(pretrained_run, in_workspace, monkeypatch):
    from safetensors.torch import load_file

    straight = _scst(pretrained_run, Path("runs/scst-straight"))
    resume_normally = interrupt_at_step(monkeypatch, 2)
    out = in_workspace / "runs/scst-stopped"
    with pytest.raises(SystemExit) as stopped:
        _scst(pretrained_run, out)
    assert stopped.value.code == 130 and not (out / "run.json").exists()
    resume_normally()
    _scst(pretrained_run, out, resume=True)
    ours, theirs = _records(out), _records(straight)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for key in ("loss", "reward/mean", "kl", "val_cider"):
        assert [r[key] for r in ours if key in r] == pytest.approx([r[key] for r in theirs if key in r], rel=1e-6)
    a, b = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_supervised_term_reads_every_reference_slot_image_by_image(monkeypatch):
    monkeypatch.setattr(scst, "pixel_values", lambda processor, images: torch.zeros(len(images), 3))
    split = Dataset.from_dict({"image": [None, None], "captions": [["a", "b", "c"], ["d"]]})
    batch = scst.ImageBatchMaker(split, None, reference_labels=lambda captions: captions)([1, 0])
    assert batch["reference_labels"] == ["d", "a", "d", "b", "d", "c"]  # row i*B + b: reference i of image b
    assert "reference_labels" not in scst.ImageBatchMaker(split, None)([0])


def test_the_supervised_term_lowers_the_references_cross_entropy(pretrained_run, in_workspace):
    run = _scst(pretrained_run, Path("runs/scst-sft"), max_steps=12, lr=5e-3, sft_weight=1.0, eval_every=100)
    sft = [r["sft_loss"] for r in _records(run) if "sft_loss" in r]
    assert len(sft) == 12 and sum(sft[-3:]) / 3 < 0.95 * sum(sft[:3]) / 3, sft
    assert "sft_loss" not in _records(_scst(pretrained_run, Path("runs/scst-no-sft"), sft_weight=0.0))[0]
