"""The cross-attention captioner: a transformers VisionEncoderDecoderModel plus a contrastive head.

Saved run folders are plain transformers folders (config.json, model.safetensors, tokenizer,
preprocessor_config.json), so they load in `VisionEncoderDecoderModel.from_pretrained` without
capalign; the head sits beside them in its own file. (transformers 5 folded the "image-to-text"
pipeline into "image-text-to-text", which needs a text prompt and does not drive encoder–decoder
captioners, so no pipeline is promised.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    GPT2Config,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)

from capalign.config import ModelConfig
from capalign.models.contrastive import ContrastiveHead, pool_last_token

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_image_processor(cfg: ModelConfig) -> CLIPImageProcessor:
    """CLIP preprocessing at the preset's image size."""
    return CLIPImageProcessor(
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def build_tiny_model(cfg: ModelConfig, tokenizer) -> VisionEncoderDecoderModel:
    """A small CLIP-style ViT and a small GPT-2 with cross-attention, from configs (random init)."""
    vision = CLIPVisionConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_hidden * 4,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.heads,
    )
    decoder = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max(64, cfg.max_caption_tokens + 2),
        n_embd=cfg.decoder_hidden,
        n_layer=cfg.decoder_layers,
        n_head=cfg.heads,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vision, decoder)
    model = VisionEncoderDecoderModel(config=config)
    configure_special_tokens(model, tokenizer, cfg.max_caption_tokens)
    return model


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


class Captioner(nn.Module):
    """A VisionEncoderDecoderModel with an optional contrastive head, trained as one module."""

    def __init__(self, model: VisionEncoderDecoderModel, head: ContrastiveHead | None):
        super().__init__()
        self.model = model
        self.head = head

    @classmethod
    def with_new_head(cls, model: VisionEncoderDecoderModel, projection_dim: int) -> "Captioner":
        head = ContrastiveHead(model.config.encoder.hidden_size, model.config.decoder.hidden_size, projection_dim)
        return cls(model, head)

    def encode_images(self, pixel_values: torch.Tensor):
        return self.model.encoder(pixel_values=pixel_values)

    def caption_logits(self, encoder_outputs, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for `labels` (-100 marks padding); VED shifts them right itself."""
        return self.model(encoder_outputs=encoder_outputs, labels=labels).logits

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The decoder's own text-only pass (no cross-attention), pooled at the last real token."""
        hidden = self.model.decoder.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_last_token(hidden, attention_mask)

    def forward(self, pixel_values, labels, input_ids, attention_mask):
        """Captioning loss and (with a head) the symmetric InfoNCE loss of matching pairs in the batch."""
        from capalign.losses import info_nce, token_cross_entropy

        encoded = self.encode_images(pixel_values)
        logits = self.caption_logits(encoded, labels)
        out = {"caption_loss": token_cross_entropy(logits, labels)}
        if self.head is not None:
            image_emb = self.head.embed_image(encoded.pooler_output)
            text_emb = self.head.embed_text(self.text_features(input_ids, attention_mask))
            out["contrastive_loss"] = info_nce(image_emb, text_emb, self.head.logit_scale)
        return out


def save_captioner(run_dir: Path, captioner: Captioner, tokenizer, processor) -> None:
    """Write a plain transformers folder (+ the head) that loads without capalign."""
    run_dir = Path(run_dir)
    captioner.model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    processor.save_pretrained(run_dir)
    if captioner.head is not None:
        captioner.head.save(run_dir)


def load_captioner(run_dir: Path):
    """Load (Captioner, tokenizer, image processor) from a run folder; local files only."""
    run_dir = Path(run_dir)
    model = VisionEncoderDecoderModel.from_pretrained(run_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(run_dir, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(run_dir, local_files_only=True)
    return Captioner(model, ContrastiveHead.load(run_dir)), tokenizer, processor
