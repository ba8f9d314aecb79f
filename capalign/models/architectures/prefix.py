"""Prefix captioners (ClipCap): pooled image embedding → mapping network → prefix embeddings → a
causal language model (capalign.models.prefix holds the module)."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPVisionModel, GPT2LMHeadModel

from capalign.models import backbones
from capalign.models.architectures.base import Architecture, EncodedImages, shifted_inputs
from capalign.models.backbones import pooled
from capalign.models.build import configure_prefix_generation, processed_size, tiny_decoder_config, tiny_vision_config
from capalign.models.prefix import MAPPERS, PrefixCaptionModel, PrefixMapper

MAPPER_LIMITS = {"image_dim": 1 << 16, "text_dim": 1 << 16, "prefix_length": 1 << 10, "layers": 64, "heads": 256}
MAPPER_OPTIONAL = {"clip_length": 1 << 10, "image_projection": 1 << 16}  # a whole number, or null
MAPPER_FLAGS = ("normalize", "qkv_bias")  # ClipCap conversions (capalign.models.clipcap) set these


class Prefix(Architecture):
    name = "prefix"
    buildable = True
    prompt_tokens = 0  # decoder.generate(inputs_embeds=...) returns only the new tokens
    module_class = PrefixCaptionModel

    def description_problem(self, info: dict) -> str | None:
        mapper = info.get("mapper")
        required, known = set(MAPPER_LIMITS) | {"kind"}, set(MAPPER_LIMITS) | set(MAPPER_OPTIONAL) | set(MAPPER_FLAGS) | {"kind"}
        if not isinstance(mapper, dict) or not required <= set(mapper) <= known or mapper["kind"] not in MAPPERS:
            return f"has no valid 'mapper' (kind among {', '.join(MAPPERS)} and {', '.join(MAPPER_LIMITS)})"
        for key, limit in (*MAPPER_LIMITS.items(), *MAPPER_OPTIONAL.items()):
            value = mapper.get(key)
            if (key in MAPPER_LIMITS or value is not None) and (type(value) is not int or not 1 <= value <= limit):
                return f"has mapper {key} = {str(value)[:40]} (expected a whole number from 1 to {limit})"
        if any(type(mapper.get(key, True)) is not bool for key in MAPPER_FLAGS):
            return f"has a mapper {' or '.join(MAPPER_FLAGS)} that is not true/false"
        return None

    def build(self, cfg, tokenizer, processor) -> PrefixCaptionModel:
        vision = backbones.load_vision(cfg.vision) if cfg.vision else CLIPVisionModel(tiny_vision_config(cfg))
        decoder = backbones.load_decoder(cfg.decoder) if cfg.decoder else \
            GPT2LMHeadModel(tiny_decoder_config(cfg, tokenizer, False, prefix_length=cfg.prefix_length))
        mapper = PrefixMapper(backbones.output_dim(vision, processed_size(processor)), decoder.config.hidden_size,
                              cfg.prefix_length, cfg.mapper, cfg.mapper_layers, cfg.mapper_heads)
        configure_prefix_generation(decoder, tokenizer, cfg.max_caption_tokens)
        return PrefixCaptionModel(vision, decoder, mapper)

    def load(self, folder: Path, info: dict) -> PrefixCaptionModel:
        return PrefixCaptionModel.from_pretrained(folder, info)

    def describe(self, model) -> dict:
        return model.describe()

    def image_dim(self, model) -> int:
        return model.mapper.text_dim

    def frozen_decoder_in_eval(self) -> bool:
        return True

    def encode_images(self, model, vision_out, vision_hidden, vision_pooled, pixel_values) -> EncodedImages:
        prefix = model.mapper(pooled(vision_out) if vision_out is not None else vision_pooled)
        return EncodedImages(last_hidden_state=prefix, pooler_output=prefix.mean(dim=1))

    def caption_logits(self, model, encoded, labels):
        return model.caption_logits(encoded.last_hidden_state, labels)

    def prior_logits(self, model, labels):
        config = model.decoder.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        start = config.bos_token_id if config.bos_token_id is not None else config.eos_token_id
        inputs, attention = shifted_inputs(labels, start, pad)
        return model.decoder(input_ids=inputs, attention_mask=attention).logits

    def generate(self, model, pixel_values, encode, **kwargs):
        return model.generate(encode(pixel_values).last_hidden_state, **kwargs)


ARCHITECTURE = Prefix()
