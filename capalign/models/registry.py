"""The one place an architecture is chosen: its name (a run's capalign_model.json `arch`, a preset's
`model.arch`) or a transformers folder's config.json `model_type` → the class that owns everything
that differs between architectures (capalign.models.architectures.base.Architecture).

As open_clip's factory picks CLIP, CustomTextCLIP or CoCa from a model config, so here: adding an
architecture is one module under capalign.models.architectures plus one line in `_ARCHITECTURES`.
Modules are imported on first use, so importing the registry (capalign.config does) stays cheap.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from capalign.errors import ConfigError

# name → (module defining ARCHITECTURE, config.json model_types it loads from a plain transformers folder)
_ARCHITECTURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cross-attention": ("capalign.models.architectures.cross_attention", ("vision-encoder-decoder",)),
    "prefix": ("capalign.models.architectures.prefix", ()),
    "contrastive": ("capalign.models.architectures.contrastive", ()),
    "blip": ("capalign.models.architectures.blip", ("blip",)),
    "git": ("capalign.models.architectures.git", ("git",)),
}
NAMES = tuple(_ARCHITECTURES)
MODEL_DESCRIPTION = "capalign_model.json"  # as capalign.runs names it (runs imports this module)
FOREIGN_TYPES = tuple(t for _, types in _ARCHITECTURES.values() for t in types)


def get(name: str):
    """The architecture called `name`; an unknown name is a ConfigError listing the known ones."""
    if name not in _ARCHITECTURES:
        raise ConfigError(f"unknown model architecture {str(name)[:40]!r}; capalign knows {', '.join(NAMES)}.")
    return importlib.import_module(_ARCHITECTURES[name][0]).ARCHITECTURE


def find(name):
    """The architecture called `name`, or None for a name capalign does not know."""
    return get(name) if name in _ARCHITECTURES else None


def for_model_type(model_type: str | None) -> str | None:
    """The architecture that loads a transformers folder whose config.json says `model_type`, or None."""
    return next((name for name, (_, types) in _ARCHITECTURES.items() if model_type in types), None)


def for_module(model) -> object:
    """The architecture whose model class `model` (a built or loaded torch module) is."""
    for name in NAMES:
        architecture = get(name)
        if architecture.owns(model):
            return architecture
    raise ValueError(f"no architecture owns a {type(model).__name__}")


def config_problem(model_cfg) -> str | None:
    """What is wrong with a ModelConfig's architecture settings (one sentence), or None."""
    if model_cfg.arch not in _ARCHITECTURES:
        return f"--arch must be one of {', '.join(NAMES)} (got {model_cfg.arch})"
    return get(model_cfg.arch).config_problem(model_cfg)


def _model_type(folder: Path) -> str | None:
    try:
        data = json.loads((folder / "config.json").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data.get("model_type") if isinstance(data, dict) else None


def folder_architecture(folder: str | Path) -> str | None:
    """The architecture of a model folder: its capalign_model.json `arch` (a capalign run), else its
    config.json `model_type` (a transformers captioner as save_pretrained writes it); None when it is
    neither. The description itself is checked when the model loads (capalign.models.io)."""
    folder = Path(folder)
    if (folder / MODEL_DESCRIPTION).is_file():
        try:
            arch = json.loads((folder / MODEL_DESCRIPTION).read_bytes().decode("utf-8")).get("arch")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return None
        return arch if arch in _ARCHITECTURES else None
    return for_model_type(_model_type(folder))


def not_a_captioner(folder: str | Path) -> str:
    """Why `folder` is no captioner capalign loads (one sentence, for error messages)."""
    folder = Path(folder)
    found = _model_type(folder)
    kinds = ", ".join(FOREIGN_TYPES)
    if found:
        return (f"{folder} holds a '{found}' model (config.json model_type); capalign loads capalign run folders and "
                f"transformers captioners of type {kinds}")
    return (f"{folder} is not a finished capalign run folder (no run.json/config.json) nor a transformers captioner "
            f"folder (config.json with model_type {kinds})")
