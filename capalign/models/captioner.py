"""Captioners: one module (`Captioner`) over three architectures.

- cross-attention: a transformers VisionEncoderDecoderModel (its run folders load in plain
  transformers; see capalign.models.io).
- prefix (ClipCap): see capalign.models.prefix.
- contrastive: an image encoder trained against a frozen CLIP text tower (no decoder).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from capalign import distributed
from capalign.data.collate import tokenize_captions
from capalign.errors import UserError
from capalign.models.backbones import output_dim, pooled
from capalign.models.contrastive import ContrastiveHead, pool_last_token


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

    def pixels_for_model(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixel values in the vision encoder's parameter dtype (a model cast to bfloat16 takes bfloat16)."""
        return pixel_values.to(next(self.vision.parameters()).dtype)

    def vision_outputs(self, pixel_values: torch.Tensor):
        """The raw encoder output (no gradient through a frozen encoder)."""
        pixel_values = self.pixels_for_model(pixel_values)
        if self.frozen["vision"]:
            with torch.no_grad():
                return self.vision(pixel_values=pixel_values)
        return self.vision(pixel_values=pixel_values)

    def encode_images(self, pixel_values: torch.Tensor | None = None, vision_hidden: torch.Tensor | None = None,
                      vision_pooled: torch.Tensor | None = None) -> BaseModelOutputWithPooling:
        """Encode pixels, or take cached encoder outputs (`vision_hidden`, `vision_pooled`)."""
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
        if self.text_tower is not None:
            limit = self.text_tower.config.max_position_embeddings
            enc = self.text_tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        batch = tokenize_captions(tokenizer, texts, self.max_caption_tokens)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.arch == "cross-attention":
            return self.model.generate(pixel_values=self.pixels_for_model(pixel_values), **kwargs)
        if self.arch == "prefix":
            return self.model.generate(self.encode_images(pixel_values).last_hidden_state, **kwargs)
        raise UserError("This is a contrastive-only model (no caption decoder); it scores and retrieves but cannot caption.")

    def forward(self, labels=None, input_ids=None, attention_mask=None, pixel_values=None, vision_hidden=None,
                vision_pooled=None, text_input_ids=None, text_attention_mask=None):
        """What the stage-1 objective (capalign.losses.stage1_loss) needs: teacher-forced caption logits
        and, with a head, the image and caption embeddings gathered over processes (see
        capalign.distributed), with the head's temperature."""
        encoded = self.encode_images(pixel_values, vision_hidden, vision_pooled)
        out = {}
        if self.arch != "contrastive":
            out["logits"] = self.caption_logits(encoded, labels)
        if self.head is not None:
            if self.text_tower is not None:
                text = self.text_features(text_input_ids, text_attention_mask)
            else:
                text = self.text_features(input_ids, attention_mask)
            out["image_emb"] = distributed.gather(self.head.embed_image(encoded.pooler_output))
            out["text_emb"] = distributed.gather(self.head.embed_text(text))
            out["logit_scale"] = self.head.logit_scale
        return out


def _image_size(vision: nn.Module) -> int:
    size = getattr(vision.config, "image_size", 224)
    return size if isinstance(size, int) else size[0]
