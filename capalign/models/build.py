"""Build a Captioner for a run from its ModelConfig: each part loaded by name or path, or built from
the config (random initialisation) when none is given. What each architecture builds is its own
(capalign.models.architectures); the shared pieces (tiny configs, special tokens) are here.

| arch | vision | decoder | text side |
|---|---|---|---|
| cross-attention | `--vision` or a small CLIP ViT | `--decoder` with cross-attention switched on, or a small GPT-2 | decoder text-only pass, or `--text-encoder` |
| prefix | `--vision` (any AutoModel vision: CLIP, MobileNetV2, ...) | `--decoder` (any causal LM) | same |
| contrastive | `--vision` or a ViT from scratch | none | `--text-encoder` (frozen CLIP text tower) |
"""

from __future__ import annotations

from typing import Iterable

from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, GenerationConfig, GPT2Config, VisionEncoderDecoderModel

from capalign.config import ModelConfig
from capalign.models import backbones, registry
from capalign.data.collate import pixel_values
from capalign.models.captioner import Captioner
from capalign.models.contrastive import ContrastiveHead
from capalign.models.tokenizer import train_word_tokenizer
from capalign.reporting import log


CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_vision_config(cfg: ModelConfig) -> CLIPVisionConfig:
    """A CLIP-style ViT built from the model config's sizes (random initialisation)."""
    extra = {} if cfg.dropout is None else {"dropout": cfg.dropout, "attention_dropout": cfg.dropout}
    return CLIPVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_hidden,
                            intermediate_size=cfg.vision_hidden * 4, num_hidden_layers=cfg.vision_layers,
                            num_attention_heads=cfg.heads, **extra)


def tiny_decoder_config(cfg: ModelConfig, tokenizer, cross_attention: bool, prefix_length: int = 0) -> GPT2Config:
    """A GPT-2 built from the model config's sizes, with the tokenizer's special ids (and room for
    `prefix_length` prefix embeddings before the caption)."""
    extra = {} if cfg.dropout is None else {"resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout}
    prefix = prefix_length
    return GPT2Config(vocab_size=len(tokenizer), n_positions=max(64, cfg.max_caption_tokens + prefix + 2),
                      n_embd=cfg.decoder_hidden, n_layer=cfg.decoder_layers, n_head=cfg.heads,
                      add_cross_attention=cross_attention, is_decoder=cross_attention,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, **extra)


def processed_size(processor) -> int:
    """The side of the pixel tensors the processor produces."""
    return int(pixel_values(processor, [Image.new("RGB", (8, 8))]).shape[-1])


def build_captioner(cfg: ModelConfig, captions: Iterable[str], with_head: bool):
    """(Captioner, tokenizer, image processor) for a new run; the model itself is the architecture's
    to build (capalign.models.registry)."""
    architecture = registry.get(cfg.arch)
    text_tower = text_tokenizer = None
    if cfg.text_encoder:
        text_tower = backbones.load_text_tower(cfg.text_encoder)
        text_tokenizer = backbones.load_tokenizer(cfg.text_encoder)
    if not architecture.captions:
        tokenizer = text_tokenizer
    elif cfg.decoder:
        tokenizer = backbones.load_tokenizer(cfg.decoder)
    else:
        tokenizer = train_word_tokenizer(captions)

    processor = backbones.load_image_processor(cfg.vision) if cfg.vision else None
    if processor is None:
        if cfg.vision:
            log.warning(f"note: {cfg.vision} has no preprocessor_config.json; using CLIP preprocessing at {cfg.image_size}px.")
        processor = build_image_processor(cfg)
    model = architecture.build(cfg, tokenizer, processor)
    captioner = Captioner(model, None, text_tower=text_tower, text_tokenizer=text_tokenizer, architecture=architecture)
    if with_head:
        captioner.head = ContrastiveHead(captioner.image_dim, captioner.text_dim, cfg.projection_dim)
    captioner.freeze(vision=cfg.freeze_vision, decoder=cfg.freeze_decoder if captioner.decoder is not None else None,
                     text=cfg.freeze_text if text_tower is not None else None)
    return captioner, tokenizer, processor


def configure_prefix_generation(decoder, tokenizer, max_new_tokens: int) -> None:
    """Pad/EOS ids and the default caption length go with the decoder (saved with it)."""
    decoder.config.pad_token_id = tokenizer.pad_token_id
    decoder.config.eos_token_id = tokenizer.eos_token_id
    decoder.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens,
    )


def build_image_processor(cfg: ModelConfig) -> CLIPImageProcessor:
    """CLIP preprocessing at the preset's image size."""
    return CLIPImageProcessor(
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def configure_special_tokens(model: VisionEncoderDecoderModel, tokenizer, max_new_tokens: int) -> None:
    """VED needs decoder_start/pad ids for `forward(labels=...)`; generation defaults go with the model."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    model.config.decoder_start_token_id = start
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start,
        bos_token_id=start,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens,
    )
