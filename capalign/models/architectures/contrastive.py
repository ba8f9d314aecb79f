"""Contrastive-only models: an image encoder trained against a frozen CLIP text tower; no decoder, so
they score and retrieve but do not caption."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPVisionModel

from capalign.models import backbones
from capalign.models.architectures.base import Architecture
from capalign.models.build import tiny_vision_config
from capalign.models.prefix import ImageEncoderModel


class Contrastive(Architecture):
    name = "contrastive"
    captions = False
    prompt_tokens = 0
    buildable = True
    module_class = ImageEncoderModel

    def config_problem(self, model_cfg) -> str | None:
        if model_cfg.text_encoder is None:
            return "the contrastive architecture needs a CLIP text tower: pass --text-encoder NAME_OR_PATH"
        return None

    def build(self, cfg, tokenizer, processor) -> ImageEncoderModel:
        return ImageEncoderModel(backbones.load_vision(cfg.vision) if cfg.vision else CLIPVisionModel(tiny_vision_config(cfg)))

    def load(self, folder: Path, info: dict) -> ImageEncoderModel:
        return ImageEncoderModel.from_pretrained(folder, info)

    def text_dim(self, model) -> int:
        raise ValueError("a contrastive-only model has no decoder: its text side is the CLIP text tower")


ARCHITECTURE = Contrastive()
