"""Captioners: one module (`Captioner`) over every architecture, each a class of
capalign.models.architectures (cross-attention VisionEncoderDecoder, prefix/ClipCap, contrastive
only, BLIP, GIT) that capalign.models.registry picks once; `Captioner` adds the contrastive head and
an optional frozen CLIP text tower, and delegates the rest to its architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from capalign import distributed
from capalign.data.collate import tokenize_captions
from capalign.models import registry
from capalign.models.architectures.base import EncodedImages
from capalign.models.contrastive import ContrastiveHead


class Captioner(nn.Module):
    """One trainable module for every architecture, with the interface pretrain, align, generation
    and scoring use:

    - `encode_images(pixel_values)` (or cached encoder outputs) → EncodedImages, whose
      `last_hidden_state` is what captioning conditions on (the encoder tokens; for prefix models the
      prefix embeddings) and whose `pooler_output` feeds the contrastive head;
    - `caption_logits(encoded, labels)` → teacher-forced logits aligned with `labels` (several
      captions per image: `labels` rows are k × the images, image-major blocks);
    - `text_features(input_ids, attention_mask)` → pooled caption features (the decoder's text-only
      pass, or a frozen CLIP text tower when the run has one);
    - `generate(pixel_values, **kwargs)` → caption token ids.

    `model` is the architecture's torch module (a transformers VisionEncoderDecoderModel,
    BlipForConditionalGeneration, GitForCausalLM, a PrefixCaptionModel or an ImageEncoderModel);
    `architecture` the registry's class for it.
    """

    def __init__(self, model: nn.Module, head: ContrastiveHead | None, text_tower: nn.Module | None = None,
                 text_tokenizer=None, architecture=None):
        super().__init__()
        self.model = model
        self.architecture = architecture or registry.for_module(model)
        self.head = head
        self.text_tower = text_tower
        self.text_tokenizer = text_tokenizer
        self.frozen: dict[str, bool] = {"vision": False, "decoder": False, "text": text_tower is not None}
        if text_tower is not None:
            self.freeze(text=True)

    # ------------------------------------------------------------------ structure

    @property
    def arch(self) -> str:
        return self.architecture.name

    @property
    def vision(self) -> nn.Module:
        return self.architecture.vision(self.model)

    @property
    def decoder(self) -> nn.Module | None:
        return self.architecture.decoder(self.model)

    def set_decoder(self, decoder: nn.Module) -> None:
        """Replace the language model (LoRA wraps it, merging unwraps it)."""
        self.architecture.set_decoder(self.model, decoder)

    @property
    def image_dim(self) -> int:
        return self.architecture.image_dim(self.model)

    @property
    def text_dim(self) -> int:
        if self.text_tower is not None:
            return self.text_tower.config.projection_dim
        return self.architecture.text_dim(self.model)

    @property
    def max_caption_tokens(self) -> int:
        return self.architecture.max_caption_tokens(self.model)

    @property
    def prompt_tokens(self) -> int:
        """How many start tokens the ids `generate` returns begin with, before the caption's own."""
        return self.architecture.prompt_tokens

    def transition_scorer(self) -> nn.Module:
        """The module whose `compute_transition_scores` scores what `generate` returns."""
        return self.architecture.transition_scorer(self.model)

    def freeze(self, vision: bool | None = None, decoder: bool | None = None, text: bool | None = None) -> None:
        """Stop training a part; frozen parts also stay in eval mode (dropout off, batch-norm statistics fixed).

        A frozen decoder of an encoder–decoder architecture keeps its cross-attention layers
        trainable, or nothing would connect the image to the words."""
        for name, value in (("vision", vision), ("decoder", decoder), ("text", text)):
            if value is None:
                continue
            self.frozen[name] = value
            part = {"vision": self.vision, "decoder": self.decoder, "text": self.text_tower}[name]
            if part is None:
                continue
            for pname, param in part.named_parameters():
                keep = name == "decoder" and self.architecture.keeps_trainable(pname)
                param.requires_grad_(not value or keep)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for name, part in (("vision", self.vision), ("text", self.text_tower)):
                if part is not None and self.frozen.get(name):
                    part.eval()
            if self.decoder is not None and self.frozen.get("decoder") and self.architecture.frozen_decoder_in_eval():
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
                      vision_pooled: torch.Tensor | None = None) -> EncodedImages:
        """Encode pixels, or take cached encoder outputs (`vision_hidden`, `vision_pooled`)."""
        out = self.vision_outputs(pixel_values) if pixel_values is not None else None
        pixels = self.pixels_for_model(pixel_values) if pixel_values is not None else None
        return self.architecture.encode_images(self.model, out, vision_hidden, vision_pooled, pixels)

    def caption_logits(self, encoded: EncodedImages, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for `labels` (-100 marks padding); logits[:, t] predicts labels[:, t].
        With k captions per image, `labels` row i*B + b is caption i of image b."""
        images = next(t for t in (encoded.last_hidden_state, encoded.pixel_values, encoded.pooler_output) if t is not None)
        return self.architecture.caption_logits(self.model, encoded.repeated(labels.size(0) // images.size(0)), labels)

    def prior_logits(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of the decoder alone, with no image (its language prior)."""
        return self.architecture.prior_logits(self.model, labels)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled caption features: the frozen text tower's embedding when there is one, else the
        decoder's own text-only pass (no cross-attention) at the last real token."""
        if self.text_tower is not None:
            grad = torch.enable_grad() if not self.frozen["text"] and torch.is_grad_enabled() else torch.no_grad()
            with grad:
                return self.text_tower(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        return self.architecture.text_features(self.model, input_ids, attention_mask)

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
        return self.architecture.generate(self.model, self.pixels_for_model(pixel_values), self.encode_images, **kwargs)

    def forward(self, labels=None, input_ids=None, attention_mask=None, pixel_values=None, vision_hidden=None,
                vision_pooled=None, text_input_ids=None, text_attention_mask=None):
        """What the stage-1 objective (capalign.losses.stage1_loss) needs: teacher-forced caption logits
        and, with a head, the image and caption embeddings gathered over processes (see
        capalign.distributed), with the head's temperature."""
        encoded = self.encode_images(pixel_values, vision_hidden, vision_pooled)
        out = {}
        if self.architecture.captions:
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
