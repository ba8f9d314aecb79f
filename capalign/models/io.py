"""A run folder ↔ a model: `save_captioner` writes (Captioner, tokenizer, image processor) and
`load_captioner` reads them back, local files only.

Cross-attention runs are plain transformers folders (config.json, model.safetensors, tokenizer,
preprocessor_config.json) that load in `VisionEncoderDecoderModel.from_pretrained` without capalign;
the contrastive head sits beside them in its own file. (transformers 5 folded the "image-to-text"
pipeline into "image-text-to-text", which needs a text prompt and does not drive encoder–decoder
captioners, so no pipeline is promised.) Prefix / contrastive runs hold `vision/`, `decoder/`
(save_pretrained folders) and `mapper.safetensors`. Every run: `capalign_model.json`; a frozen CLIP
text tower in `text/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from transformers import AutoImageProcessor, AutoTokenizer, CLIPTextModelWithProjection, VisionEncoderDecoderModel

from capalign.models.captioner import Captioner
from capalign.models.contrastive import ContrastiveHead
from capalign.models.prefix import ImageEncoderModel, PrefixCaptionModel
from capalign.devices import resolve_dtype
from capalign.runs import CONFIG_NAME, MODEL_DESCRIPTION


def read_description(run_dir: Path) -> dict | None:
    """The run's capalign_model.json, or None (older cross-attention runs have none)."""
    path = Path(run_dir) / MODEL_DESCRIPTION
    return json.loads(path.read_text()) if path.is_file() else None


def describe(captioner: Captioner) -> dict:
    """What `capalign_model.json` records: the architecture (and mapper), and which parts are frozen."""
    model = captioner.model
    info = model.describe() if hasattr(model, "describe") else {"arch": "cross-attention"}
    info["frozen"] = dict(captioner.frozen)
    info["text_tower"] = captioner.text_tower is not None
    return info


def save_captioner(run_dir: Path, captioner: Captioner, tokenizer, processor) -> None:
    """Write the model, tokenizer and image processor into the run folder (layout: module docstring)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    captioner.model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    processor.save_pretrained(run_dir)
    if captioner.head is not None:
        captioner.head.save(run_dir)
    if captioner.text_tower is not None:
        captioner.text_tower.save_pretrained(run_dir / "text")
        captioner.text_tokenizer.save_pretrained(run_dir / "text")
    (run_dir / MODEL_DESCRIPTION).write_text(json.dumps(describe(captioner), indent=1))


def trained_precision(run_dir: Path) -> str | None:
    """The run's `train.mixed_precision` (no, fp16, bf16) from its saved config, or None."""
    path = Path(run_dir) / CONFIG_NAME
    config = yaml.safe_load(path.read_text()) if path.is_file() else None
    return ((config or {}).get("train") or {}).get("mixed_precision")


def load_captioner(run_dir: Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None):
    """Load (Captioner, tokenizer, image processor) from a run folder; local files only. `device`:
    where the model goes (None: stays on the CPU); `dtype`: a torch dtype or a `--dtype` name (see
    capalign.devices.resolve_dtype) to cast it to (None: as saved)."""
    run_dir = Path(run_dir)
    info = read_description(run_dir) or {"arch": "cross-attention"}
    if info["arch"] == "prefix":
        model = PrefixCaptionModel.from_pretrained(run_dir, info)
    elif info["arch"] == "contrastive":
        model = ImageEncoderModel.from_pretrained(run_dir, info)
    else:
        model = VisionEncoderDecoderModel.from_pretrained(run_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(run_dir, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(run_dir, local_files_only=True)
    text_tower = text_tokenizer = None
    if info.get("text_tower"):
        text_tower = CLIPTextModelWithProjection.from_pretrained(run_dir / "text", local_files_only=True)
        text_tokenizer = AutoTokenizer.from_pretrained(run_dir / "text", local_files_only=True)
    captioner = Captioner(model, ContrastiveHead.load(run_dir), text_tower=text_tower, text_tokenizer=text_tokenizer)
    frozen = info.get("frozen", {})
    captioner.freeze(vision=frozen.get("vision"), decoder=frozen.get("decoder"), text=frozen.get("text"))
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, torch.device(device or "cpu"), trained_precision(run_dir))
    if device is not None:
        captioner.to(device)
    if dtype is not None:
        captioner.to(dtype)
    return captioner, tokenizer, processor
