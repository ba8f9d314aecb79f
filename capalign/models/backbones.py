"""Pretrained backbones by Hugging Face name or local path, loaded with `from_pretrained`.

A name is looked up in the local Hugging Face cache first; when it is not there and the hub is
unreachable (or offline mode is on) we fail within a second with one sentence saying what to run on a
connected machine. Never `trust_remote_code`: only architectures that transformers ships load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import transformers
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

from capalign.errors import InputError
from capalign.hub import fetch_model, offline_mode
from capalign.models import guard
from capalign.models.guard import NO_REMOTE_CODE
from capalign.models.tokenizer import ensure_pad_token

HINT = "pass a valid model folder or Hugging Face model id"

# Composite (image + text) checkpoints whose vision tower has its own model class.
_VISION_TOWERS = {
    "clip": ("transformers", "CLIPVisionModel"),
    "clip_vision_model": ("transformers", "CLIPVisionModel"),
    "siglip": ("transformers", "SiglipVisionModel"),
    "siglip_vision_model": ("transformers", "SiglipVisionModel"),
}
_TEXT_TOWERS = {
    "clip": "CLIPTextModelWithProjection",
    "clip_text_model": "CLIPTextModelWithProjection",
}


def resolve(name_or_path: str) -> str:
    """A local folder holding the model: the path itself, the cached snapshot of a hub name, or a
    fresh download when the hub is reachable. Missing and offline is an InputError."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} has no config.json; pass a folder written by save_pretrained or a Hugging Face model id.")
        guard.check_folder(path.resolve(), HINT)
        return str(path.resolve())
    if path.exists():
        raise InputError(f"{path} is a file; pass a model folder or a Hugging Face model id.")
    try:
        with offline_mode():
            found = snapshot_download(name_or_path, local_files_only=True)
    except Exception:  # not cached (or not a valid id): fetch_model says which, or downloads
        found = str(fetch_model(name_or_path))
    guard.check_folder(Path(found), HINT)
    return found


def _config(path: str):
    with guard.loading(path, HINT, what="config.json"):
        return AutoConfig.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE)


def load_vision(name_or_path: str) -> torch.nn.Module:
    """An image encoder: the vision tower of a CLIP/SigLIP checkpoint, or any AutoModel vision model
    (ViT, MobileNetV2, DINOv2, ...)."""
    path = resolve(name_or_path)
    config = _config(path)
    model_type = config.model_type
    if model_type in _VISION_TOWERS:
        cls = getattr(transformers, _VISION_TOWERS[model_type][1])
        tower_config = getattr(config, "vision_config", None) or config
        guard.check_size(path, lambda: cls(tower_config), HINT)
        with guard.loading(path, HINT, what="weights"):
            return cls.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE)
    guard.check_size(path, lambda: AutoModel.from_config(config, **NO_REMOTE_CODE), HINT)
    with guard.loading(path, HINT, what="weights"):
        model = AutoModel.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE)
    if getattr(model.config, "vision_config", None) is not None or getattr(model.config, "text_config", None) is not None:
        raise InputError(f"{name_or_path} is a composite '{model_type}' model; pass a vision-only model or a CLIP/SigLIP checkpoint.")
    return model


def load_text_tower(name_or_path: str) -> torch.nn.Module:
    """A CLIP text tower (with its projection) from a CLIP checkpoint or a text-only CLIP folder."""
    path = resolve(name_or_path)
    config = _config(path)
    if config.model_type not in _TEXT_TOWERS:
        raise InputError(f"--text-encoder must be a CLIP checkpoint (got a '{config.model_type}' model at {name_or_path}).")
    kwargs = {}
    if config.model_type == "clip":  # the projection width is a top-level field of a full CLIP config
        text_config = config.text_config
        text_config.projection_dim = config.projection_dim
        kwargs["config"] = text_config
    cls = getattr(transformers, _TEXT_TOWERS[config.model_type])
    guard.check_size(path, lambda: cls(kwargs.get("config", config)), HINT)
    with guard.loading(path, HINT, what="weights"):
        return cls.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE, **kwargs)


def load_decoder(name_or_path: str) -> torch.nn.Module:
    """A causal language model (GPT-2, DistilGPT2, ...), as the prefix architecture's decoder."""
    path = resolve(name_or_path)
    config = _config(path)
    guard.check_size(path, lambda: AutoModelForCausalLM.from_config(config, **NO_REMOTE_CODE), HINT)
    with guard.loading(path, HINT, what="weights"):
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE)


def load_tokenizer(name_or_path: str):
    """The model's tokenizer, with a pad token."""
    path = resolve(name_or_path)
    with guard.loading(path, HINT, what="tokenizer files"):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE)
    ensure_pad_token(tokenizer)
    return tokenizer


def load_image_processor(name_or_path: str):
    """The vision model's own image processor, or None when its folder has none."""
    path = resolve(name_or_path)
    if not (Path(path) / "preprocessor_config.json").is_file():
        return None
    with guard.loading(path, HINT, what="preprocessor_config.json"):
        return AutoImageProcessor.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE)


def pooled(outputs) -> torch.Tensor:
    """One vector per image: the model's pooled output (CLS / average pool), else the token mean."""
    value = getattr(outputs, "pooler_output", None)
    if value is None:
        value = outputs.last_hidden_state.mean(dim=1)
    return value.flatten(1)


def is_sequence_encoder(vision: torch.nn.Module, image_size: int) -> bool:
    """Whether the encoder yields a token sequence (what cross-attention needs), not a conv map."""
    with torch.no_grad():
        out = vision(pixel_values=torch.zeros(1, 3, image_size, image_size))
    return out.last_hidden_state.dim() == 3


def output_dim(vision: torch.nn.Module, image_size: int) -> int:
    """Width of `pooled` for this encoder (probed: conv nets name it differently in their configs)."""
    hidden = getattr(vision.config, "hidden_size", None)
    if isinstance(hidden, int) and getattr(vision.config, "model_type", "") not in ("mobilenet_v2", "mobilenet_v1"):
        return hidden
    was_training = vision.training
    vision.eval()
    with torch.no_grad():
        dim = pooled(vision(pixel_values=torch.zeros(1, 3, image_size, image_size))).shape[-1]
    vision.train(was_training)
    return dim


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes and values)."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
