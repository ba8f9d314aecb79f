"""GIT captioners (transformers' GitForCausalLM): image tokens from a CLIP ViT, projected and put in
front of the caption in one causal transformer. They load from a save_pretrained folder or a Hub
download and are saved back in that same format (GitProcessor's files included)."""

from __future__ import annotations

from pathlib import Path

from transformers import GitForCausalLM, GitProcessor

from capalign.models import guard
from capalign.models.architectures.base import Architecture, EncodedImages, shifted_inputs
from capalign.models.backbones import pooled
from capalign.models.contrastive import pool_last_token


class Git(Architecture):
    name = "git"
    transformers_class = "GitForCausalLM"
    caches_features = False  # GIT's forward takes pixels (it projects the image tokens itself)
    module_class = GitForCausalLM

    def load(self, folder: Path, info: dict) -> GitForCausalLM:
        return guard.load_pretrained(GitForCausalLM, folder)

    def save_preprocessing(self, folder: Path, tokenizer, processor) -> None:
        GitProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)

    def vision(self, model):
        return model.git.image_encoder

    def decoder(self, model):
        return model.git.encoder

    def set_decoder(self, model, decoder) -> None:
        model.git.encoder = decoder

    def text_dim(self, model) -> int:
        return model.config.hidden_size

    def encode_images(self, model, vision_out, vision_hidden, vision_pooled, pixel_values) -> EncodedImages:
        return EncodedImages(pooler_output=pooled(vision_out) if vision_out is not None else vision_pooled,
                             pixel_values=pixel_values)

    def _inputs(self, model, labels):
        return shifted_inputs(labels, model.config.bos_token_id, model.config.pad_token_id or 0)

    def caption_logits(self, model, encoded, labels):
        inputs, attention = self._inputs(model, labels)
        logits = model(input_ids=inputs, attention_mask=attention, pixel_values=encoded.pixel_values).logits
        return logits[:, -labels.size(1):]  # the image tokens come first

    def prior_logits(self, model, labels):
        inputs, attention = self._inputs(model, labels)
        return model(input_ids=inputs, attention_mask=attention).logits

    def generate(self, model, pixel_values, encode, **kwargs):
        return model.generate(pixel_values=pixel_values, **kwargs)

    def transition_scorer(self, model):
        return model

    def text_features(self, model, input_ids, attention_mask):
        hidden = model.git(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_last_token(hidden, attention_mask)


ARCHITECTURE = Git()
