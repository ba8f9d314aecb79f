"""A run folder ↔ a model: `save_captioner` writes (Captioner, tokenizer, image processor) and
`load_captioner` reads them back, local files only.

Cross-attention runs are plain transformers folders (config.json, model.safetensors, tokenizer,
preprocessor_config.json) that load in `VisionEncoderDecoderModel.from_pretrained` without capalign;
so are runs started from a BLIP or GIT captioner (`BlipForConditionalGeneration`, `GitForCausalLM`,
with their processor's files), and `load_captioner` reads any such transformers captioner folder too
(capalign.models.registry picks the architecture from config.json's model_type). The contrastive
head sits beside them in its own file. (transformers 5 folded the "image-to-text"
pipeline into "image-text-to-text", which needs a text prompt and does not drive encoder–decoder
captioners, so no pipeline is promised.) Prefix / contrastive runs hold `vision/`, `decoder/`
(save_pretrained folders) and `mapper.safetensors`. Every run: `capalign_model.json`; a frozen CLIP
text tower in `text/`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPTextModelWithProjection

from capalign.config import load_config
from capalign.errors import InputError
from capalign.models import guard, registry
from capalign.models.captioner import Captioner
from capalign.models.contrastive import ContrastiveHead
from capalign.models.guard import NO_REMOTE_CODE
from capalign.devices import resolve_dtype
from capalign.runs import CONFIG_NAME, MODEL_DESCRIPTION



def read_description(run_dir: Path) -> dict | None:
    """The run's capalign_model.json, or None (older cross-attention runs and transformers captioner
    folders have none); one checked for its fields' types and sizes (an InputError when it is damaged)."""
    path = Path(run_dir) / MODEL_DESCRIPTION
    if not path.is_file():
        return None
    with guard.loading(run_dir, what=MODEL_DESCRIPTION):
        info = json.loads(path.read_bytes().decode("utf-8"))
    problem = _description_problem(info)
    if problem:
        raise InputError(f"cannot load model from {run_dir}: {MODEL_DESCRIPTION} {problem}; {guard.HINT}")
    return info


def _description_problem(info) -> str | None:
    """What is wrong with a capalign_model.json's content, or None."""
    if not isinstance(info, dict) or info.get("arch") not in registry.NAMES:
        return f"must be a JSON object with an arch among {', '.join(registry.NAMES)}"
    if not isinstance(info.get("frozen", {}), dict) or not all(
            v is None or isinstance(v, bool) for v in info.get("frozen", {}).values()):
        return "has a 'frozen' entry that is not a mapping of true/false"
    return registry.get(info.get("arch")).description_problem(info)


def folder_description(folder: Path) -> dict:
    """capalign_model.json, or for a folder without one the description its config.json's model_type
    implies (a transformers captioner; a folder with neither is an older cross-attention run)."""
    info = read_description(folder)
    if info is not None:
        return info
    return {"arch": registry.folder_architecture(folder) or "cross-attention"}


def describe(captioner: Captioner) -> dict:
    """What `capalign_model.json` records: the architecture (and mapper), and which parts are frozen."""
    info = captioner.architecture.describe(captioner.model)
    info["frozen"] = dict(captioner.frozen)
    info["text_tower"] = captioner.text_tower is not None
    return info


def save_captioner(run_dir: Path, captioner: Captioner, tokenizer, processor) -> None:
    """Write the model, tokenizer and image processor into the run folder (layout: module docstring)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    captioner.architecture.save(captioner.model, run_dir)
    captioner.architecture.save_preprocessing(run_dir, tokenizer, processor)
    if captioner.head is not None:
        captioner.head.save(run_dir)
    if captioner.text_tower is not None:
        captioner.text_tower.save_pretrained(run_dir / "text")
        captioner.text_tokenizer.save_pretrained(run_dir / "text")
    (run_dir / MODEL_DESCRIPTION).write_text(json.dumps(describe(captioner), indent=1))


def foreign_model_config(folder: Path, base):
    """The ModelConfig a run started from a transformers captioner folder records: its architecture,
    the folder as its vision and decoder, the rest as `base` (a capalign run records its own)."""
    return dataclasses.replace(base, arch=folder_description(Path(folder)).get("arch"),
                               vision=str(folder), decoder=str(folder))


def trained_precision(run_dir: Path) -> str | None:
    """The run's `train.mixed_precision` (no, fp16, bf16) from its saved config, or None."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return None
    with guard.loading(run_dir, what=CONFIG_NAME):
        return load_config(path).train.mixed_precision


def load_captioner(run_dir: Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None):
    """Load (Captioner, tokenizer, image processor) from a run folder; local files only. `device`:
    where the model goes (None: stays on the CPU); `dtype`: a torch dtype or a `--dtype` name (see
    capalign.devices.resolve_dtype) to cast it to (None: as saved)."""
    run_dir = Path(run_dir)
    guard.check_folder(run_dir)
    info = folder_description(run_dir)
    architecture = registry.get(info.get("arch"))
    model = architecture.load(run_dir, info)
    tokenizer, processor = architecture.load_preprocessing(run_dir)
    architecture.prepare_tokenizer(model, tokenizer)
    text_tower = text_tokenizer = None
    if info.get("text_tower"):
        text_tower = guard.load_pretrained(CLIPTextModelWithProjection, run_dir / "text")
        with guard.loading(run_dir / "text", what="tokenizer files"):
            text_tokenizer = AutoTokenizer.from_pretrained(run_dir / "text", local_files_only=True, **NO_REMOTE_CODE)
    captioner = Captioner(model, ContrastiveHead.load(run_dir), text_tower=text_tower, text_tokenizer=text_tokenizer,
                          architecture=architecture)
    frozen = info.get("frozen", {})
    captioner.freeze(vision=frozen.get("vision"), decoder=frozen.get("decoder"), text=frozen.get("text"))
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, torch.device(device or "cpu"), trained_precision(run_dir))
    if device is not None:
        captioner.to(device)
    if dtype is not None:
        captioner.to(dtype)
    return captioner, tokenizer, processor
