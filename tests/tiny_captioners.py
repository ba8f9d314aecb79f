"""Tiny transformers captioners (VisionEncoderDecoder, BLIP, GIT) built from their real classes and
configs, saved exactly as `save_pretrained` writes them with their real processor and tokenizer
classes, as a user (or a Hub download) would hand them to capalign."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertTokenizerFast,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPImageProcessor,
    GitConfig,
    GitForCausalLM,
    GitProcessor,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    VisionEncoderDecoderModel,
)

from tests.tiny_backbones import WORDS, _gpt2_tokenizer

SIZE = 32


def _bert_tokenizer(folder: Path) -> BertTokenizerFast:
    """A word-piece tokenizer like BLIP's and GIT's (bert-base-uncased's specials, no EOS token)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab-source.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    vocab.unlink()
    return tokenizer


def build_ved(folder: Path) -> Path:
    """ViT encoder + GPT-2 decoder with cross-attention, ViTImageProcessor, GPT-2 tokenizer (no pad
    token), the layout of the Hub's vit-gpt2 captioners."""
    torch.manual_seed(0)
    tokenizer = _gpt2_tokenizer()
    encoder = ViTModel(ViTConfig(image_size=SIZE, patch_size=16, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, initializer_range=0.5))
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                         add_cross_attention=True, is_decoder=True, initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.generation_config.max_length = 12
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


def build_blip(folder: Path) -> Path:
    """BlipForConditionalGeneration saved with its BlipProcessor (BLIP image processor + BERT tokenizer)."""
    torch.manual_seed(0)
    tokenizer = _bert_tokenizer(folder)
    config = BlipConfig(
        vision_config=dict(image_size=SIZE, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, initializer_range=0.5),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64, initializer_range=0.5,
                         bos_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                         eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id),
        projection_dim=16)
    model = BlipForConditionalGeneration(config)
    model.generation_config.max_length = 12
    model.save_pretrained(folder)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def build_git(folder: Path) -> Path:
    """GitForCausalLM saved with its GitProcessor (CLIP image processor + BERT tokenizer)."""
    torch.manual_seed(0)
    tokenizer = _bert_tokenizer(folder)
    config = GitConfig(
        vision_config=dict(image_size=SIZE, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, initializer_range=0.5),
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64, initializer_range=0.5, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model = GitForCausalLM(config)
    model.generation_config.max_length = 12
    model.save_pretrained(folder)
    processor = GitProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                                crop_size={"height": SIZE, "width": SIZE}),
                             tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


BUILDERS = {"vision-encoder-decoder": (build_ved, VisionEncoderDecoderModel),
            "blip": (build_blip, BlipForConditionalGeneration),
            "git": (build_git, GitForCausalLM)}
