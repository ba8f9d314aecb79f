"""Every preset's pretrained backbones at their published size, with random weights, saved as a hub
download would be, so the rehearsal (tests/test_real_size.py, bench/bench_real_size.py) runs the real
shapes and memory through the normal `--vision PATH --decoder PATH --text-encoder PATH` code path.

The transformers config defaults are the published architectures: `CLIPConfig()` is CLIP ViT-B/32
(224 px vision tower, 12-layer 512-wide text tower, 49,408 tokens), `GPT2Config()` is GPT-2 124M with
its 50,257-token vocabulary, `MobileNetV2Config()` is MobileNetV2 1.0/224; GPT-2 Medium and DistilGPT2
differ from GPT-2 only in depth and width. The GPT-2 tokenizer is a byte-level BPE with exactly
GPT-2's vocabulary size and special-token set-up: no pad token, `<|endoftext|>` as BOS = EOS = UNK.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    MobileNetV2Config,
    MobileNetV2ImageProcessor,
    MobileNetV2Model,
)

from tiny_backbones import WORDS, _clip_tokenizer

GPT2_VOCAB = 50257
DECODERS = {"gpt2": {}, "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16}, "distilgpt2": {"n_layer": 6}}
# What each preset loads from where (folder names under the root build_published_backbones fills).
PRESET_BACKBONES = {
    "clip-gpt2": {"vision": "clip", "decoder": "gpt2"},
    "clip-gpt2-medium": {"vision": "clip", "decoder": "gpt2-medium"},
    "clipcap": {"vision": "clip", "decoder": "gpt2"},
    "clipcap-mlp": {"vision": "clip", "decoder": "gpt2"},
    "mobilenet-gpt2": {"vision": "mobilenet", "decoder": "distilgpt2", "text_encoder": "clip"},
    "vit-scratch": {"text_encoder": "clip"},
}


def gpt2_style_tokenizer() -> GPT2TokenizerFast:
    """Byte-level BPE trained to GPT-2's 50,257 entries (shapes words plus random letter strings, so
    the merges fill the vocabulary); `<|endoftext|>` is BOS, EOS and UNK and there is no pad token."""
    rng = random.Random(0)
    filler = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(200_000)]
    corpus = [" ".join(WORDS)] * 50 + [" ".join(filler[i:i + 50]) for i in range(0, len(filler), 50)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=GPT2_VOCAB, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")


def build_published_backbones(root: Path, names: set[str]) -> dict[str, Path]:
    """Save the named backbones (`clip`, `gpt2`, `gpt2-medium`, `distilgpt2`, `mobilenet`) at their
    published size under `root`; folders already there are reused. Returns name -> folder."""
    root = Path(root)
    torch.manual_seed(0)
    folders = {name: root / name for name in names}
    missing = {name for name, folder in folders.items() if not (folder / "config.json").is_file()}
    if "clip" in missing:
        tokenizer = _clip_tokenizer()
        config = CLIPConfig()
        config.text_config.eos_token_id = tokenizer.eos_token_id
        config.text_config.bos_token_id = tokenizer.bos_token_id
        config.text_config.pad_token_id = tokenizer.pad_token_id
        CLIPModel(config).save_pretrained(folders["clip"])
        tokenizer.save_pretrained(folders["clip"])
        CLIPImageProcessor().save_pretrained(folders["clip"])  # 224 px, CLIP's mean and std
    gpt2_names = missing & set(DECODERS)
    if gpt2_names:
        tokenizer = gpt2_style_tokenizer()
        for name in gpt2_names:
            config = GPT2Config(**DECODERS[name], bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
            GPT2LMHeadModel(config).save_pretrained(folders[name])
            tokenizer.save_pretrained(folders[name])
    if "mobilenet" in missing:
        MobileNetV2Model(MobileNetV2Config()).save_pretrained(folders["mobilenet"])
        MobileNetV2ImageProcessor().save_pretrained(folders["mobilenet"])
    return folders


def preset_backbone_args(preset: str, root: Path) -> list[str]:
    """The `--vision/--decoder/--text-encoder` options that point `preset` at its published-size
    stand-ins under `root` (built there first when missing)."""
    parts = PRESET_BACKBONES[preset]
    folders = build_published_backbones(root, set(parts.values()))
    return [arg for option, name in parts.items() for arg in (f"--{option.replace('_', '-')}", str(folders[name]))]
