"""BLIP captioners (transformers' BlipForConditionalGeneration): a ViT whose tokens a BERT-style text
decoder attends to. They load from a save_pretrained folder or a Hub download and are saved back in
that same format (BlipProcessor's files included)."""

from __future__ import annotations

from pathlib import Path

from transformers import BlipForConditionalGeneration, BlipProcessor

from capalign.errors import ConfigError
from capalign.models import guard
from capalign.models.architectures.base import Architecture, EncodedImages, shifted_inputs
from capalign.models.backbones import pooled


class Blip(Architecture):
    name = "blip"
    transformers_class = "BlipForConditionalGeneration"
    keeps_encoder_tokens = True
    module_class = BlipForConditionalGeneration

    def load(self, folder: Path, info: dict) -> BlipForConditionalGeneration:
        return guard.load_pretrained(BlipForConditionalGeneration, folder)

    def save_preprocessing(self, folder: Path, tokenizer, processor) -> None:
        BlipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)

    def end_token_id(self, model) -> int | None:
        return model.config.text_config.sep_token_id  # what BLIP's generate stops at

    def vision(self, model):
        return model.vision_model

    def decoder(self, model):
        return model.text_decoder

    def set_decoder(self, model, decoder) -> None:
        model.text_decoder = decoder

    def keeps_trainable(self, name: str) -> bool:
        return "crossattention" in name

    def encode_images(self, model, vision_out, vision_hidden, vision_pooled, pixel_values) -> EncodedImages:
        if vision_out is not None:
            return EncodedImages(last_hidden_state=vision_out.last_hidden_state, pooler_output=pooled(vision_out))
        return EncodedImages(last_hidden_state=vision_hidden, pooler_output=vision_pooled)

    def caption_logits(self, model, encoded, labels):
        # BLIP's captions start with its decoder BOS (`decoder_input_ids`), as its forward() and generate() do
        inputs, attention = shifted_inputs(labels, model.decoder_input_ids, model.config.text_config.pad_token_id)
        hidden = encoded.last_hidden_state.to(model.text_decoder.dtype)
        return model.text_decoder(input_ids=inputs, attention_mask=attention, encoder_hidden_states=hidden).logits

    def generate(self, model, pixel_values, encode, **kwargs):
        return model.generate(pixel_values=pixel_values, **kwargs)

    def text_features(self, model, input_ids, attention_mask):
        raise ConfigError("a BLIP captioner's text decoder has no text-only pass; a contrastive head needs --text-encoder.")


ARCHITECTURE = Blip()
