"""The model interface: one `Architecture` per kind of captioner owns what differs between them
(building, loading and saving, freezing, encoding images, teacher-forced caption logits, generation,
the model whose `compute_transition_scores` scores generated tokens, text features for the
contrastive head). `capalign.models.captioner.Captioner` delegates to it; capalign.models.registry
picks it once.

Architectures are stateless: each method takes the architecture's torch module (`model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import ModelOutput

from capalign.errors import ConfigError, InputError
from capalign.models import guard
from capalign.models.backbones import output_dim, pooled
from capalign.models.contrastive import pool_last_token
from capalign.models.guard import NO_REMOTE_CODE
from capalign.models.tokenizer import ensure_pad_token

NO_DECODER = "This is a contrastive-only model (no caption decoder); it scores and retrieves but cannot caption."


@dataclass
class EncodedImages(ModelOutput):
    """What captioning conditions on (`last_hidden_state`: encoder tokens, or prefix embeddings),
    the pooled features the contrastive head embeds, and (for architectures that re-read them, GIT)
    the pixels themselves."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None

    def repeated(self, times: int) -> "EncodedImages":
        """The same images `times` over (row i*B + b is image b), for scoring several captions each."""
        if times == 1:
            return self
        return EncodedImages(*(None if t is None else t.repeat(times, *([1] * (t.dim() - 1)))
                               for t in (self.last_hidden_state, self.pooler_output, self.pixel_values)))


class Architecture:
    """The defaults here fit a vision encoder (`model.encoder`) + causal language model
    (`model.decoder`); subclasses override what differs."""

    name = "?"
    captions = True  # False: contrastive only (no decoder)
    buildable = False  # pretrain can build it from a preset's sizes / --vision / --decoder
    transformers_class: str | None = None  # the transformers class that loads its folder without capalign
    caches_features = True  # a frozen encoder's outputs can be cached (train.feature_cache)
    keeps_encoder_tokens = False  # the cache keeps the encoder's token sequence, not only its pooled output
    module_class: type | None = None  # the torch module class this architecture owns
    prompt_tokens = 1  # how many start tokens `generate`'s output begins with (a prefix model's: none)

    # ------------------------------------------------------------------ choosing, building, files

    def owns(self, model: nn.Module) -> bool:
        return self.module_class is not None and isinstance(model, self.module_class)

    def config_problem(self, model_cfg) -> str | None:
        """What a ModelConfig lacks for this architecture, or None."""
        if self.buildable:
            return None
        return (f"--arch {self.name} is not built from a preset; caption, evaluate or align an existing {self.name} "
                "model with --model FOLDER_OR_HUB_ID")

    def description_problem(self, info: dict) -> str | None:
        """What is wrong with the architecture-specific fields of a capalign_model.json, or None."""
        return None

    def build(self, cfg, tokenizer, processor) -> nn.Module:
        raise ConfigError(f"the {self.name} architecture is not built from a preset; start from an existing model "
                          "(pass it as --model).")

    def load(self, folder: Path, info: dict) -> nn.Module:
        raise NotImplementedError

    def save(self, model: nn.Module, folder: Path) -> None:
        model.save_pretrained(folder)

    def describe(self, model: nn.Module) -> dict:
        """What capalign_model.json records about the architecture."""
        return {"arch": self.name}

    def save_preprocessing(self, folder: Path, tokenizer, processor) -> None:
        """Write the tokenizer and image processor files as the architecture's own loaders read them."""
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)

    def load_preprocessing(self, folder: Path):
        """(tokenizer, image processor) from a model folder, local files only."""
        guard.require(folder, "preprocessor_config.json|processor_config.json", "tokenizer.json|vocab.json|vocab.txt|tokenizer.model")
        with guard.loading(folder, what="tokenizer files"):
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **NO_REMOTE_CODE)
        with guard.loading(folder, what="preprocessor_config.json"):
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, **NO_REMOTE_CODE)
        return tokenizer, processor

    def prepare_tokenizer(self, model: nn.Module, tokenizer) -> None:
        """Give the tokenizer the special tokens capalign's caption batches use: an EOS (the model's
        own end token when the tokenizer names none, as BERT tokenizers of BLIP and GIT) and a pad
        token (EOS when there is none, as GPT-2's; batches mask padding by length, not by id)."""
        eos = self.end_token_id(model)
        if tokenizer.eos_token is None and eos is not None:
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
        ensure_pad_token(tokenizer)

    def end_token_id(self, model: nn.Module) -> int | None:
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        return eos[0] if isinstance(eos, list) and eos else eos

    # ------------------------------------------------------------------ parts

    def vision(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def decoder(self, model: nn.Module) -> nn.Module | None:
        """The language model (what LoRA wraps and a frozen decoder freezes), or None."""
        return getattr(model, "decoder", None)

    def set_decoder(self, model: nn.Module, decoder: nn.Module) -> None:
        model.decoder = decoder

    def image_dim(self, model: nn.Module) -> int:
        vision = self.vision(model)
        size = getattr(vision.config, "image_size", 224)
        return output_dim(vision, size if isinstance(size, int) else size[0])

    def text_dim(self, model: nn.Module) -> int:
        return self.decoder(model).config.hidden_size

    def keeps_trainable(self, name: str) -> bool:
        """Whether a parameter of a frozen decoder stays trainable (cross-attention: the link to the image)."""
        return False

    def frozen_decoder_in_eval(self) -> bool:
        """Whether a frozen decoder also stays in eval mode (only when nothing of it trains)."""
        return False

    def max_caption_tokens(self, model: nn.Module) -> int:
        config = getattr(model, "generation_config", None)
        return (getattr(config, "max_new_tokens", None) if config is not None else None) or 32

    # ------------------------------------------------------------------ computing

    def encode_images(self, model: nn.Module, vision_out, vision_hidden, vision_pooled,
                      pixel_values: torch.Tensor | None) -> EncodedImages:
        """From the encoder's output (`vision_out`, None when cached features are given instead)."""
        return EncodedImages(pooler_output=pooled(vision_out) if vision_out is not None else vision_pooled)

    def caption_logits(self, model: nn.Module, encoded: EncodedImages, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for `labels` (-100 marks padding); logits[:, t] predicts labels[:, t]."""
        raise InputError(NO_DECODER)

    def prior_logits(self, model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
        """As caption_logits with no image (the decoder's language prior, for image-free pairs)."""
        raise InputError(f"the {self.name} architecture cannot score captions without images; give pairs with images.")

    def generate(self, model: nn.Module, pixel_values: torch.Tensor, encode, **kwargs) -> torch.Tensor:
        """Caption token ids (`encode(pixels)` gives EncodedImages when the architecture needs them)."""
        raise InputError(NO_DECODER)

    def transition_scorer(self, model: nn.Module):
        """The module whose `compute_transition_scores` matches what `generate` returns."""
        return self.decoder(model)

    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled caption features from the decoder's text-only pass, at the last real token."""
        hidden = self.decoder(model).base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_last_token(hidden, attention_mask)


def shifted_inputs(labels: torch.Tensor, start: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs for teacher forcing: `labels` shifted right after `start` (-100 → `pad`), and
    their attention mask (the start token and every real label but the last)."""
    inputs = labels.new_full(labels.shape, pad)
    inputs[:, 0] = start
    inputs[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
    attention = torch.ones_like(inputs)
    attention[:, 1:] = (labels[:, :-1] != -100).long()
    return inputs, attention
