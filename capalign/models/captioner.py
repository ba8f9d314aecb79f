"""Captioners: one module (`Captioner`) over three architectures, plus saving and loading.

- cross-attention: a transformers VisionEncoderDecoderModel. Its run folders are plain transformers
  folders (config.json, model.safetensors, tokenizer, preprocessor_config.json) that load in
  `VisionEncoderDecoderModel.from_pretrained` without capalign; the head sits beside them in its own
  file. (transformers 5 folded the "image-to-text" pipeline into "image-text-to-text", which needs a
  text prompt and does not drive encoder–decoder captioners, so no pipeline is promised.)
- prefix (ClipCap): see capalign.models.prefix.
- contrastive: an image encoder trained against a frozen CLIP text tower (no decoder).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
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
from transformers.modeling_outputs import BaseModelOutputWithPooling

from capalign.config import ModelConfig
from capalign.errors import UserError
from capalign.models.contrastive import ContrastiveHead, pool_last_token

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DESCRIPTION = "capalign_model.json"


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
        **({} if cfg.dropout is None else {"dropout": cfg.dropout, "attention_dropout": cfg.dropout}),
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
        **({} if cfg.dropout is None else {"resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout}),
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
    """One trainable module for every architecture, with the interface pretrain, align, generation
    and scoring use:

    - `encode_images(pixel_values)` (or cached encoder outputs) → an output whose `last_hidden_state`
      is what captioning conditions on (the encoder tokens; for prefix models the prefix embeddings)
      and whose `pooler_output` feeds the contrastive head;
    - `caption_logits(encoded, labels)` → teacher-forced logits aligned with `labels`;
    - `text_features(input_ids, attention_mask)` → pooled caption features (the decoder's text-only
      pass, or a frozen CLIP text tower when the run has one);
    - `generate(pixel_values, **kwargs)` → caption token ids.

    `model` is a transformers VisionEncoderDecoderModel (cross-attention), a PrefixCaptionModel
    (prefix, ClipCap) or an ImageEncoderModel (contrastive only).
    """

    def __init__(self, model: nn.Module, head: ContrastiveHead | None, text_tower: nn.Module | None = None,
                 text_tokenizer=None):
        super().__init__()
        self.model = model
        self.head = head
        self.text_tower = text_tower
        self.text_tokenizer = text_tokenizer
        self.frozen: dict[str, bool] = {"vision": False, "decoder": False, "text": text_tower is not None}
        if text_tower is not None:
            self.freeze(text=True)

    @classmethod
    def with_new_head(cls, model: nn.Module, projection_dim: int, **kwargs) -> "Captioner":
        captioner = cls(model, None, **kwargs)
        captioner.head = ContrastiveHead(captioner.image_dim, captioner.text_dim, projection_dim)
        return captioner

    # ------------------------------------------------------------------ structure

    @property
    def arch(self) -> str:
        return getattr(self.model, "arch", "cross-attention")

    @property
    def vision(self) -> nn.Module:
        return self.model.encoder

    @property
    def decoder(self) -> nn.Module | None:
        return getattr(self.model, "decoder", None)

    @property
    def image_dim(self) -> int:
        if self.arch == "prefix":
            return self.model.mapper.text_dim
        from capalign.models.backbones import output_dim

        return output_dim(self.vision, _image_size(self.vision))

    @property
    def text_dim(self) -> int:
        if self.text_tower is not None:
            return self.text_tower.config.projection_dim
        return self.decoder.config.hidden_size

    @property
    def max_caption_tokens(self) -> int:
        config = getattr(self.model, "generation_config", None)
        return (config.max_new_tokens if config is not None else None) or 32

    def freeze(self, vision: bool | None = None, decoder: bool | None = None, text: bool | None = None) -> None:
        """Stop training a part; frozen parts also stay in eval mode (dropout off, batch-norm statistics fixed).

        A frozen decoder of the cross-attention architecture keeps its (new) cross-attention layers
        trainable, or nothing would connect the image to the words."""
        for name, value in (("vision", vision), ("decoder", decoder), ("text", text)):
            if value is None:
                continue
            self.frozen[name] = value
            part = {"vision": self.vision, "decoder": self.decoder, "text": self.text_tower}[name]
            if part is None:
                continue
            for pname, param in part.named_parameters():
                keep = name == "decoder" and self.arch == "cross-attention" and ("crossattention" in pname or "ln_cross_attn" in pname)
                param.requires_grad_(not value or keep)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for name, part in (("vision", self.vision), ("text", self.text_tower)):
                if part is not None and self.frozen.get(name):
                    part.eval()
            if self.decoder is not None and self.frozen.get("decoder") and self.arch == "prefix":
                self.decoder.eval()
        return self

    # ------------------------------------------------------------------ the interface

    def vision_outputs(self, pixel_values: torch.Tensor):
        """The raw encoder output (no gradient through a frozen encoder)."""
        if self.frozen["vision"]:
            with torch.no_grad():
                return self.vision(pixel_values=pixel_values)
        return self.vision(pixel_values=pixel_values)

    def encode_images(self, pixel_values: torch.Tensor | None = None, vision_hidden: torch.Tensor | None = None,
                      vision_pooled: torch.Tensor | None = None) -> BaseModelOutputWithPooling:
        """Encode pixels, or take cached encoder outputs (`vision_hidden`, `vision_pooled`)."""
        from capalign.models.backbones import pooled

        if pixel_values is not None:
            out = self.vision_outputs(pixel_values)
            if self.arch == "cross-attention":
                return out
            vision_hidden, vision_pooled = None, pooled(out)
        if self.arch == "cross-attention":
            return BaseModelOutputWithPooling(last_hidden_state=vision_hidden, pooler_output=vision_pooled)
        if self.arch == "prefix":
            prefix = self.model.mapper(vision_pooled)
            return BaseModelOutputWithPooling(last_hidden_state=prefix, pooler_output=prefix.mean(dim=1))
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=vision_pooled)

    def caption_logits(self, encoder_outputs, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for `labels` (-100 marks padding); logits[:, t] predicts labels[:, t]."""
        if self.arch == "cross-attention":
            return self.model(encoder_outputs=encoder_outputs, labels=labels).logits  # VED shifts labels itself
        if self.arch == "prefix":
            return self.model.caption_logits(encoder_outputs.last_hidden_state, labels)
        raise UserError("This is a contrastive-only model (no caption decoder); it scores and retrieves but cannot caption.")

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled caption features: the frozen text tower's embedding when there is one, else the
        decoder's own text-only pass (no cross-attention) at the last real token."""
        if self.text_tower is not None:
            grad = torch.enable_grad() if not self.frozen["text"] and torch.is_grad_enabled() else torch.no_grad()
            with grad:
                return self.text_tower(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        hidden = self.decoder.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_last_token(hidden, attention_mask)

    def tokenize_texts(self, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
        """Inputs for `text_features`: the text tower's own tokenizer (with its BOS/EOS), else caption
        tokenisation with the decoder's tokenizer."""
        from capalign.data.collate import tokenize_captions

        if self.text_tower is not None:
            limit = self.text_tower.config.max_position_embeddings
            enc = self.text_tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        batch = tokenize_captions(tokenizer, texts, self.max_caption_tokens)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.arch == "cross-attention":
            return self.model.generate(pixel_values=pixel_values, **kwargs)
        if self.arch == "prefix":
            return self.model.generate(self.encode_images(pixel_values).last_hidden_state, **kwargs)
        raise UserError("This is a contrastive-only model (no caption decoder); it scores and retrieves but cannot caption.")

    def forward(self, labels=None, input_ids=None, attention_mask=None, pixel_values=None, vision_hidden=None,
                vision_pooled=None, text_input_ids=None, text_attention_mask=None):
        """Loss parts: captioning cross-entropy, and with a head the symmetric InfoNCE of matching pairs
        plus the embeddings and logits the optional loss terms need. Under multi-process training the
        parts are reduced so that N processes equal one process with the same global batch
        (see capalign.distributed)."""
        from capalign import distributed
        from capalign.losses import info_nce

        spread = self.training and distributed.world_size() > 1
        encoded = self.encode_images(pixel_values, vision_hidden, vision_pooled)
        out = {}
        if self.arch != "contrastive":
            logits = self.caption_logits(encoded, labels)
            out["caption_loss"] = distributed.token_cross_entropy(logits, labels, distributed=spread)
            out["_logits"] = logits
        if self.head is not None:
            if self.text_tower is not None:
                text = self.text_features(text_input_ids, text_attention_mask)
            else:
                text = self.text_features(input_ids, attention_mask)
            image_emb = distributed.gather(self.head.embed_image(encoded.pooler_output))
            text_emb = distributed.gather(self.head.embed_text(text))
            out["contrastive_loss"] = info_nce(image_emb, text_emb, self.head.logit_scale)
            out["_image_emb"], out["_text_emb"] = image_emb, text_emb
        return out


def _image_size(vision: nn.Module) -> int:
    size = getattr(vision.config, "image_size", 224)
    return size if isinstance(size, int) else size[0]


def describe(captioner: Captioner) -> dict:
    """What `capalign_model.json` records: the architecture (and mapper), and which parts are frozen."""
    model = captioner.model
    info = model.describe() if hasattr(model, "describe") else {"arch": "cross-attention"}
    info["frozen"] = dict(captioner.frozen)
    info["text_tower"] = captioner.text_tower is not None
    return info


def save_captioner(run_dir: Path, captioner: Captioner, tokenizer, processor) -> None:
    """Write the run folder. Cross-attention: a plain transformers folder (+ the head) that loads
    without capalign. Prefix / contrastive: `vision/`, `decoder/` (save_pretrained folders) and
    `mapper.safetensors`. Every arch: `capalign_model.json`, a frozen CLIP text tower in `text/`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    captioner.model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    processor.save_pretrained(run_dir)
    if captioner.head is not None:
        captioner.head.save(run_dir)
    if captioner.text_tower is not None:
        captioner.text_tower.save_pretrained(run_dir / "text")
        captioner.text_tokenizer.save_pretrained(run_dir / "text")
    (run_dir / DESCRIPTION).write_text(json.dumps(describe(captioner), indent=1))


def load_captioner(run_dir: Path):
    """Load (Captioner, tokenizer, image processor) from a run folder; local files only."""
    from capalign.models.prefix import ImageEncoderModel, PrefixCaptionModel, read_description

    run_dir = Path(run_dir)
    info = read_description(run_dir) or {"arch": "cross-attention"}
    if info["arch"] == "prefix":
        model = PrefixCaptionModel.from_pretrained(run_dir, info)
    elif info["arch"] == "contrastive":
        model = ImageEncoderModel.from_pretrained(run_dir, info)
    else:
        model = VisionEncoderDecoderModel.from_pretrained(run_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(run_dir, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(run_dir, local_files_only=True)
    text_tower = text_tokenizer = None
    if info.get("text_tower"):
        from transformers import CLIPTextModelWithProjection

        text_tower = CLIPTextModelWithProjection.from_pretrained(run_dir / "text", local_files_only=True)
        text_tokenizer = AutoTokenizer.from_pretrained(run_dir / "text", local_files_only=True)
    captioner = Captioner(model, ContrastiveHead.load(run_dir), text_tower=text_tower, text_tokenizer=text_tokenizer)
    frozen = info.get("frozen", {})
    captioner.freeze(vision=frozen.get("vision"), decoder=frozen.get("decoder"), text=frozen.get("text"))
    return captioner, tokenizer, processor
