"""Every preset trains a few steps from tiny local backbones through `--vision PATH --decoder PATH`;
prefix runs save, reload and caption; frozen encoders' features are cached and reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from capalign.config import PRESETS, build_config
from test_cli import run_cli
from tiny_backbones import build_tiny_backbones

SMALL = {
    "model": {"mapper_layers": 1, "vision_hidden": 32, "vision_layers": 1, "heads": 2, "patch_size": 16,
              "image_size": 32, "projection_dim": 16, "max_caption_tokens": 12, "decoder_hidden": 32, "decoder_layers": 1},
    "train": {"batch_size": 8, "log_every": 1, "eval_every": 3, "checkpoint_every": 100, "val_images": 4, "lr": 1e-3},
}


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture
def small_yaml(in_workspace) -> Path:
    path = in_workspace / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def preset_args(preset: str, b: dict[str, Path]) -> list[str]:
    return {
        "clip-gpt2": ["--vision", b["clip"], "--decoder", b["gpt2"]],
        "clip-gpt2-medium": ["--vision", b["clip"], "--decoder", b["gpt2"], "--grad-accum", "2"],
        "clipcap": ["--vision", b["clip"], "--decoder", b["gpt2"]],
        "clipcap-mlp": ["--vision", b["clip"], "--decoder", b["gpt2"]],
        "mobilenet-gpt2": ["--vision", b["mobilenet"], "--decoder", b["distilgpt2"], "--text-encoder", b["clip"]],
        "vit-scratch": ["--text-encoder", b["clip"]],
        "tiny": [],
    }[preset]


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "tiny"])
def test_every_preset_trains_from_local_backbones(preset, backbones, small_yaml, in_workspace, capsys):
    from capalign.models.io import load_captioner

    out = f"runs/preset-{preset}"
    args = ["pretrain", "--preset", preset, "--config", str(small_yaml), "--max-steps", "3", "--out", out,
            *map(str, preset_args(preset, backbones))]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    run = in_workspace / out
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert json.loads((run / "run.json").read_text())["steps"] == 3
    assert (run / "best-loss").is_dir() and (run / "best-metric" / "selection.json").is_file()
    resolved = yaml.safe_load((run / "capalign.yaml").read_text())
    assert resolved["model"]["preset"] == preset

    captioner, tokenizer, processor = load_captioner(run)
    assert captioner.arch == PRESETS[preset]["model"]["arch"]
    frozen = PRESETS[preset]["model"].get("freeze_vision", False)
    assert captioner.frozen["vision"] == frozen
    if captioner.arch == "contrastive":
        assert any("val_top1" in r for r in records)
        from capalign.inference.scorer import load_scorer

        assert load_scorer(run).embed_texts(["a red circle"]).shape == (1, 16)
        return
    assert any("val_CIDEr" in r for r in records)
    from datasets import load_from_disk

    from capalign.inference.generate import DecodeOptions, caption_images

    images = load_from_disk("data/shapes")["test"]["image"][:2]
    captions = caption_images(captioner, tokenizer, processor, images, DecodeOptions(max_length=6, num_beams=2))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    if frozen:  # the frozen encoder's weights are the ones loaded, and its features were cached
        assert list((in_workspace / "data/.cache/features").glob("*/meta.json"))
        from capalign.models.backbones import load_vision

        source = backbones["mobilenet" if preset == "mobilenet-gpt2" else "clip"]
        original = load_vision(str(source)).state_dict()
        assert all(torch.equal(v, original[k]) for k, v in captioner.vision.state_dict().items())
    if PRESETS[preset]["model"].get("freeze_decoder"):
        tuned = _state(run / "decoder")
        assert all(torch.equal(tuned[k], v) for k, v in _state(backbones["gpt2"]).items() if k in tuned)


def test_prefix_run_folder_reloads_and_captions_identically(backbones, tmp_path):
    from capalign.models.build import build_captioner
    from capalign.models.io import load_captioner, save_captioner
    from PIL import Image

    config = build_config("clipcap-mlp", None, {"model": {"vision": str(backbones["clip"]), "decoder": str(backbones["gpt2"])}})
    captioner, tokenizer, processor = build_captioner(config.model, [], with_head=True)
    save_captioner(tmp_path, captioner, tokenizer, processor)
    assert (tmp_path / "vision" / "config.json").is_file() and (tmp_path / "decoder" / "config.json").is_file()
    again, tokenizer2, processor2 = load_captioner(tmp_path)
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    from capalign.inference.generate import DecodeOptions, caption_images

    options = DecodeOptions(max_length=5, num_beams=3)
    assert caption_images(again, tokenizer2, processor2, images, options) == caption_images(captioner, tokenizer, processor, images, options)
    # the prefix is 10 embeddings wide and the loss covers caption tokens only
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    encoded = captioner.encode_images(pixels)
    assert encoded.last_hidden_state.shape[1] == 10
    labels = torch.tensor([[5, 6, -100], [7, 8, 9]])
    assert captioner.caption_logits(encoded, labels).shape[:2] == labels.shape


def test_missing_backbone_fails_fast_with_a_fetch_hint(in_workspace, capsys, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(in_workspace / "empty-hf-home"))
    started = time.perf_counter()
    code, _, err = run_cli(["pretrain", "--preset", "clipcap", "--config", "tiny.yaml", "--max-steps", "1",
                            "--vision", "nobody/no-such-model", "--decoder", "nobody/no-such-model", "--out", "runs/missing"], capsys)
    assert code == 2 and "capalign fetch --model nobody/no-such-model" in err
    assert time.perf_counter() - started < 15


def test_frozen_features_are_computed_once_and_reused(backbones, small_yaml, in_workspace, monkeypatch):
    from capalign.train import feature_cache
    from capalign.train.pretrain import pretrain

    calls = []
    original = feature_cache.encode_split
    monkeypatch.setattr(feature_cache, "encode_split", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    overrides = {"model": {"vision": str(backbones["clip"]), "decoder": str(backbones["gpt2"])},
                 "train": {"max_steps": 2, "select": "none", "cache_dir": str(in_workspace / "cache-test")}}
    config = build_config("clipcap-mlp", small_yaml, overrides)

    def losses(run):
        return [json.loads(l)["loss"] for l in (in_workspace / run / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(l)]

    pretrain(config, Path("runs/cache-1"))
    assert len(calls) == 2  # train and validation, once each
    pretrain(config, Path("runs/cache-2"))
    assert len(calls) == 2  # the second run encoded nothing
    config.train.feature_cache = False
    pretrain(config, Path("runs/no-cache"))
    assert losses("runs/cache-2") == pytest.approx(losses("runs/cache-1"), rel=1e-6)
    assert losses("runs/no-cache") == pytest.approx(losses("runs/cache-1"), rel=1e-4)


def test_align_starts_from_the_pretrained_runs_preset(backbones, small_yaml, in_workspace, capsys, monkeypatch):
    """A non-tiny run is aligned with its own preset's settings (not tiny's), its mixed precision
    inherited unless given, and the settings that reach the optimiser are those."""
    import capalign.train.align as align_module

    code, _, err = run_cli(["pretrain", "--preset", "clipcap", "--config", str(small_yaml), "--max-steps", "2",
                            "--out", "runs/clipcap-pre", *map(str, preset_args("clipcap", backbones))], capsys)
    assert code == 0, err
    seen = []

    class RecordingEngine(align_module.Engine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((self.settings, [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups],
                         [g["weight_decay"] for g in self.optimizer.param_groups], self.accelerator.mixed_precision))

    monkeypatch.setattr(align_module, "Engine", RecordingEngine)
    code, _, err = run_cli(["align", "--model", "runs/clipcap-pre", "--max-steps", "1", "--pairs", "corrupted",
                            "--mixed-precision", "bf16", "--out", "runs/clipcap-align"], capsys)
    assert code == 0, err
    preset = PRESETS["clipcap"]["align"]
    settings, lrs, decays, precision = seen[0]
    assert len(seen) == 1  # clipcap aligns in one round (tiny's preset has two)
    assert settings.lr == preset["lr"] == 1e-5 and set(lrs) == {1e-5}
    assert settings.batch_size == preset["batch_size"] and set(decays) == {0.0}
    assert precision == "bf16"
    resolved = yaml.safe_load((in_workspace / "runs/clipcap-align/capalign.yaml").read_text())
    assert resolved["model"]["preset"] == "clipcap" and resolved["align"]["lr"] == 1e-5
    assert resolved["align"]["sft_weight"] == 0.0 and resolved["train"]["mixed_precision"] == "bf16"


def test_gpt2_tokenizer_with_pad_equal_to_eos_still_learns_to_stop(backbones):
    """pad == eos (GPT-2): the position after the last caption token is labelled EOS, not masked."""
    from capalign.data.collate import tokenize_captions
    from capalign.models.backbones import load_tokenizer

    tokenizer = load_tokenizer(str(backbones["gpt2"]))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    captions = ["a red circle", "a small blue square on the left"]
    batch = tokenize_captions(tokenizer, captions, max_tokens=20)
    for row, caption in enumerate(captions):
        n = len(tokenizer(caption, add_special_tokens=False)["input_ids"])
        assert batch["labels"][row, n].item() == tokenizer.eos_token_id  # EOS is a training target
        assert (batch["labels"][row, n + 1:] == -100).all()  # only the padding after it is masked
