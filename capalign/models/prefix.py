"""The prefix (ClipCap) architecture: pooled image embedding → mapping network → prefix embeddings →
a causal language model (GPT-2, DistilGPT2, ...) fed through `inputs_embeds`.

Mapping networks, as in ClipCap (Mokady et al., 2021):
- `mlp`: Linear(image, L*D/2) → Tanh → Linear(L*D); used with a tuned language model.
- `transformer`: Linear(image, C*D) → C tokens (C = `clip_length`, default L), concatenated with L
  learned constants → a pre-norm transformer encoder (ReLU, feed-forward 2*D) → the outputs at the
  constants' positions; used with a frozen language model.

A converted ClipCap checkpoint (capalign.models.clipcap) also sets `image_projection` (CLIP's
bias-free visual projection, applied to the pooled output first: ClipCap maps CLIP's projected image
embedding), `normalize` (L2-normalise that embedding) and `qkv_bias=False` (ClipCap's attention has
no query/key/value biases).

The loss covers caption tokens only (the prefix has no labels). Generation is
`decoder.generate(inputs_embeds=prefix, ...)`, which returns only the new tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from capalign.errors import InputError
from capalign.models import guard
from capalign.models.backbones import load_vision

MAPPER_WEIGHTS = "mapper.safetensors"
MAPPERS = ("mlp", "transformer")


def _heads_for(width: int, wanted: int) -> int:
    """The largest head count <= `wanted` that divides `width`."""
    return max(h for h in range(1, max(1, wanted) + 1) if width % h == 0)


class PrefixMapper(nn.Module):
    """Pooled image features (B, image_dim) → prefix embeddings (B, prefix_length, text_dim)."""

    def __init__(self, image_dim: int, text_dim: int, prefix_length: int = 10, kind: str = "mlp",
                 layers: int = 8, heads: int = 8, clip_length: int | None = None,
                 image_projection: int | None = None, normalize: bool = False, qkv_bias: bool = True):
        super().__init__()
        if kind not in MAPPERS:
            raise ValueError(f"mapper must be one of {MAPPERS}, got {kind}")
        clip_length = clip_length or prefix_length
        self.settings = {"image_dim": image_dim, "text_dim": text_dim, "prefix_length": prefix_length,
                         "kind": kind, "layers": layers, "heads": heads, "clip_length": clip_length,
                         "image_projection": image_projection, "normalize": normalize, "qkv_bias": qkv_bias}
        self.prefix_length, self.clip_length, self.text_dim, self.kind = prefix_length, clip_length, text_dim, kind
        self.normalize = normalize
        self.image_projection = None
        if image_projection is not None:
            self.image_projection = nn.Linear(image_dim, image_projection, bias=False)
            self.image_projection.requires_grad_(False)  # CLIP's own projection: frozen with CLIP, as in ClipCap
            image_dim = image_projection
        if kind == "mlp":
            hidden = max(1, text_dim * prefix_length // 2)
            self.net = nn.Sequential(nn.Linear(image_dim, hidden), nn.Tanh(), nn.Linear(hidden, text_dim * prefix_length))
        else:
            self.project = nn.Linear(image_dim, clip_length * text_dim)
            self.constants = nn.Parameter(torch.randn(prefix_length, text_dim))
            layer = nn.TransformerEncoderLayer(text_dim, _heads_for(text_dim, heads), dim_feedforward=2 * text_dim,
                                               dropout=0.0, batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            if not qkv_bias:  # nn.MultiheadAttention's `bias` would also drop the output projection's bias
                for block in self.transformer.layers:
                    block.self_attn.register_parameter("in_proj_bias", None)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        n = pooled.size(0)
        if self.image_projection is not None:
            pooled = self.image_projection(pooled)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        if self.kind == "mlp":
            return self.net(pooled).view(n, self.prefix_length, self.text_dim)
        tokens = self.project(pooled).view(n, self.clip_length, self.text_dim)
        both = torch.cat([tokens, self.constants.unsqueeze(0).expand(n, -1, -1)], dim=1)
        return self.transformer(both)[:, self.clip_length :]


class PrefixCaptionModel(nn.Module):
    """Vision encoder + mapper + causal LM; `encoder`/`decoder` names as in VisionEncoderDecoderModel."""

    arch = "prefix"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, mapper: PrefixMapper):
        super().__init__()
        self.encoder, self.decoder, self.mapper = encoder, decoder, mapper

    @property
    def generation_config(self):
        return self.decoder.generation_config

    def caption_logits(self, prefix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits aligned with `labels` (logits[:, t] predicts labels[:, t]); -100 marks padding."""
        length = prefix.size(1)
        pad = self.decoder.config.pad_token_id
        if pad is None:
            pad = self.decoder.config.eos_token_id or 0
        tokens = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
        embeds = self.decoder.get_input_embeddings()(tokens)
        inputs = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
        mask = torch.cat([torch.ones(labels.size(0), length, dtype=torch.long, device=labels.device),
                          (labels[:, :-1] != -100).long()], dim=1)
        return self.decoder(inputs_embeds=inputs, attention_mask=mask).logits[:, length - 1 :]

    def generate(self, prefix: torch.Tensor, **kwargs) -> torch.Tensor:
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        return self.decoder.generate(inputs_embeds=prefix, attention_mask=mask, **kwargs)

    def save_pretrained(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        self.encoder.save_pretrained(run_dir / "vision")
        self.decoder.save_pretrained(run_dir / "decoder")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.mapper.state_dict().items()}, str(run_dir / MAPPER_WEIGHTS))

    def describe(self) -> dict:
        return {"arch": self.arch, "mapper": self.mapper.settings}

    @classmethod
    def from_pretrained(cls, run_dir: Path, description: dict) -> "PrefixCaptionModel":
        run_dir = Path(run_dir)
        encoder = load_vision(str(run_dir / "vision"))
        decoder = guard.load_pretrained(AutoModelForCausalLM, run_dir / "decoder")
        stored = guard.safetensors_shapes(run_dir / MAPPER_WEIGHTS, run_dir)
        with torch.device("meta"):  # the described mapper's shapes, before anything is allocated
            wanted = {k: tuple(v.shape) for k, v in PrefixMapper(**description["mapper"]).state_dict().items()}
        if stored != wanted:
            raise InputError(f"cannot load model from {run_dir}: {MAPPER_WEIGHTS} does not match the mapper in "
                             f"capalign_model.json; {guard.HINT}")
        mapper = PrefixMapper(**description["mapper"])
        with guard.loading(run_dir, what=MAPPER_WEIGHTS):
            mapper.load_state_dict(load_file(str(run_dir / MAPPER_WEIGHTS)))
        return cls(encoder, decoder, mapper)


class ImageEncoderModel(nn.Module):
    """The image side of a contrastive-only model (vit-scratch): a vision encoder, no decoder."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def save_pretrained(self, run_dir: Path) -> None:
        self.encoder.save_pretrained(Path(run_dir) / "vision")

    @classmethod
    def from_pretrained(cls, run_dir: Path, description: dict) -> "ImageEncoderModel":
        return cls(load_vision(str(Path(run_dir) / "vision")))
