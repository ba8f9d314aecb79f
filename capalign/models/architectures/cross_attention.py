"""Cross-attention captioners: a transformers VisionEncoderDecoderModel (a vision encoder whose tokens
a causal decoder, GPT-2, attends to). capalign's own runs of this architecture are plain
transformers folders, and so is every VisionEncoderDecoder captioner on the Hub: both load here."""

from __future__ import annotations

from pathlib import Path

from transformers import (AutoConfig, CLIPVisionModel, GPT2LMHeadModel, VisionEncoderDecoderConfig,
                          VisionEncoderDecoderModel)
from transformers.modeling_outputs import BaseModelOutput

from capalign.errors import ConfigError
from capalign.models import backbones, guard
from capalign.models.architectures.base import Architecture, EncodedImages, shifted_inputs
from capalign.models.backbones import pooled
from capalign.models.build import configure_special_tokens, processed_size, tiny_decoder_config, tiny_vision_config
from capalign.models.guard import NO_REMOTE_CODE


class CrossAttention(Architecture):
    name = "cross-attention"
    buildable = True
    transformers_class = "VisionEncoderDecoderModel"
    keeps_encoder_tokens = True
    module_class = VisionEncoderDecoderModel

    def build(self, cfg, tokenizer, processor) -> VisionEncoderDecoderModel:
        if not cfg.vision and not cfg.decoder:
            # The embedded default: both parts from configs, initialised together as one model.
            config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
                tiny_vision_config(cfg), tiny_decoder_config(cfg, tokenizer, cross_attention=True))
            model = VisionEncoderDecoderModel(config=config)
        else:
            vision = backbones.load_vision(cfg.vision) if cfg.vision else CLIPVisionModel(tiny_vision_config(cfg))
            if not backbones.is_sequence_encoder(vision, processed_size(processor)):
                raise ConfigError(f"{cfg.vision} yields a convolutional feature map, not a token sequence; "
                                  "use it with --arch prefix.")
            if cfg.decoder:
                # transformers 5 reads `is_decoder` off the decoder config, which hub GPT-2 configs lack:
                # pass the config with cross-attention switched on (what the method would do itself).
                path = backbones.resolve(cfg.decoder)
                with guard.loading(path, backbones.HINT):
                    decoder_config = AutoConfig.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE)
                    decoder_config.is_decoder, decoder_config.add_cross_attention = True, True
                    model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(
                        encoder_model=vision, decoder_pretrained_model_name_or_path=path, decoder_config=decoder_config,
                        decoder_local_files_only=True, decoder_trust_remote_code=False)
            else:
                model = VisionEncoderDecoderModel(encoder=vision, decoder=GPT2LMHeadModel(tiny_decoder_config(cfg, tokenizer, True)))
        configure_special_tokens(model, tokenizer, cfg.max_caption_tokens)
        return model

    def load(self, folder: Path, info: dict) -> VisionEncoderDecoderModel:
        return guard.load_pretrained(VisionEncoderDecoderModel, folder)

    def prepare_tokenizer(self, model, tokenizer) -> None:
        super().prepare_tokenizer(model, tokenizer)
        # forward(labels=...) shifts labels right with these ids; Hub captioners may lack either
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if model.config.decoder_start_token_id is None:
            start = model.generation_config.decoder_start_token_id
            model.config.decoder_start_token_id = start if start is not None else (
                tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)

    def keeps_trainable(self, name: str) -> bool:
        return "crossattention" in name or "ln_cross_attn" in name

    def encode_images(self, model, vision_out, vision_hidden, vision_pooled, pixel_values) -> EncodedImages:
        if vision_out is not None:
            return EncodedImages(last_hidden_state=vision_out.last_hidden_state, pooler_output=pooled(vision_out))
        return EncodedImages(last_hidden_state=vision_hidden, pooler_output=vision_pooled)

    def caption_logits(self, model, encoded, labels):
        encoder_outputs = BaseModelOutput(last_hidden_state=encoded.last_hidden_state)
        return model(encoder_outputs=encoder_outputs, labels=labels).logits  # VED shifts labels itself

    def prior_logits(self, model, labels):
        inputs, attention = shifted_inputs(labels, model.config.decoder_start_token_id, model.config.pad_token_id)
        return model.decoder(input_ids=inputs, attention_mask=attention).logits

    def generate(self, model, pixel_values, encode, **kwargs):
        return model.generate(pixel_values=pixel_values, **kwargs)

    def transition_scorer(self, model):
        return model


ARCHITECTURE = CrossAttention()
