"""Tiny stand-ins for every preset's pretrained backbones, built from configs and saved with
`save_pretrained`, so tests load them through the same `--vision PATH --decoder PATH` code path as
`openai/clip-vit-base-patch32`, `gpt2`, `distilgpt2` and `google/mobilenet_v2_1.0_224`."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
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
    PreTrainedTokenizerFast,
)

WORDS = ("a an the red green blue yellow purple orange circle square triangle star left right top bottom "
         "middle centre center small large big shape shapes and on of in two three one image picture photo with").split()
SIZE = 32


def _clip_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, lower-cased, wrapping each text in <|startoftext|> ... <|endoftext|> as CLIP's does."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)] * 2, trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<|startoftext|>", eos_token="<|endoftext|>")


def _gpt2_tokenizer() -> GPT2TokenizerFast:
    """A byte-level BPE like GPT-2's: <|endoftext|> is BOS, EOS and UNK, and there is no pad token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4 + WORDS, trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")


def build_tiny_backbones(root: Path) -> dict[str, Path]:
    """Save tiny `clip` (full CLIP: vision + text towers), `gpt2`, `distilgpt2` and `mobilenet` folders."""
    torch.manual_seed(0)
    root = Path(root)
    clip_tok = _clip_tokenizer()
    clip = CLIPModel(CLIPConfig(
        vision_config=dict(image_size=SIZE, patch_size=16, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        text_config=dict(vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=clip_tok.eos_token_id,
                         bos_token_id=clip_tok.bos_token_id, pad_token_id=clip_tok.pad_token_id),
        projection_dim=16))
    clip.save_pretrained(root / "clip")
    clip_tok.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(root / "clip")

    gpt_tok = _gpt2_tokenizer()
    for name, layers in (("gpt2", 2), ("distilgpt2", 1)):
        GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt_tok), n_positions=64, n_embd=32, n_layer=layers, n_head=2,
                                   bos_token_id=gpt_tok.bos_token_id, eos_token_id=gpt_tok.eos_token_id)
                        ).save_pretrained(root / name)
        gpt_tok.save_pretrained(root / name)

    MobileNetV2Model(MobileNetV2Config(image_size=SIZE, depth_multiplier=0.25, min_depth=4)).save_pretrained(root / "mobilenet")
    MobileNetV2ImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(root / "mobilenet")
    return {name: root / name for name in ("clip", "gpt2", "distilgpt2", "mobilenet")}
