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

from capalign.errors import UserError
from capalign.models import guard
from capalign.models.captioner import Captioner
from capalign.models.contrastive import ContrastiveHead
from capalign.models.guard import NO_REMOTE_CODE
from capalign.models.prefix import MAPPERS, ImageEncoderModel, PrefixCaptionModel
from capalign.devices import resolve_dtype
from capalign.runs import CONFIG_NAME, MODEL_DESCRIPTION

ARCHS = ("cross-attention", "prefix", "contrastive")
MAPPER_LIMITS = {"image_dim": 1 << 16, "text_dim": 1 << 16, "prefix_length": 1 << 10, "layers": 64, "heads": 256}


def read_description(run_dir: Path) -> dict | None:
    """The run's capalign_model.json, or None (older cross-attention runs have none); one checked
    for its fields' types and sizes (a UserError when it is damaged)."""
    path = Path(run_dir) / MODEL_DESCRIPTION
    if not path.is_file():
        return None
    with guard.loading(run_dir, what=MODEL_DESCRIPTION):
        info = json.loads(path.read_bytes().decode("utf-8"))
    problem = _description_problem(info)
    if problem:
        raise UserError(f"cannot load model from {run_dir}: {MODEL_DESCRIPTION} {problem}; {guard.HINT}")
    return info


def _description_problem(info) -> str | None:
    """What is wrong with a capalign_model.json's content, or None."""
    if not isinstance(info, dict) or info.get("arch") not in ARCHS:
        return f"must be a JSON object with an arch among {', '.join(ARCHS)}"
    if not isinstance(info.get("frozen", {}), dict) or not all(
            v is None or isinstance(v, bool) for v in info.get("frozen", {}).values()):
        return "has a 'frozen' entry that is not a mapping of true/false"
    if info["arch"] != "prefix":
        return None
    mapper = info.get("mapper")
    if not isinstance(mapper, dict) or set(mapper) != set(MAPPER_LIMITS) | {"kind"} or mapper["kind"] not in MAPPERS:
        return f"has no valid 'mapper' (kind among {', '.join(MAPPERS)} and {', '.join(MAPPER_LIMITS)})"
    for key, limit in MAPPER_LIMITS.items():
        if type(mapper[key]) is not int or not 1 <= mapper[key] <= limit:
            return f"has mapper {key} = {str(mapper[key])[:40]} (expected a whole number from 1 to {limit})"
    return None


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
    with guard.loading(run_dir, what=CONFIG_NAME):
        config = yaml.safe_load(path.read_bytes().decode("utf-8")) if path.is_file() else None
    train = config.get("train") if isinstance(config, dict) else None
    return train.get("mixed_precision") if isinstance(train, dict) else None


def load_captioner(run_dir: Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None):
    """Load (Captioner, tokenizer, image processor) from a run folder; local files only. `device`:
    where the model goes (None: stays on the CPU); `dtype`: a torch dtype or a `--dtype` name (see
    capalign.devices.resolve_dtype) to cast it to (None: as saved)."""
    run_dir = Path(run_dir)
    guard.check_folder(run_dir)
    info = read_description(run_dir) or {"arch": "cross-attention"}
    if info["arch"] == "prefix":
        model = PrefixCaptionModel.from_pretrained(run_dir, info)
    elif info["arch"] == "contrastive":
        model = ImageEncoderModel.from_pretrained(run_dir, info)
    else:
        model = guard.load_pretrained(VisionEncoderDecoderModel, run_dir)
    guard.require(run_dir, "preprocessor_config.json", "tokenizer.json|vocab.json|vocab.txt")
    with guard.loading(run_dir, what="tokenizer files"):
        tokenizer = AutoTokenizer.from_pretrained(run_dir, local_files_only=True, **NO_REMOTE_CODE)
    with guard.loading(run_dir, what="preprocessor_config.json"):
        processor = AutoImageProcessor.from_pretrained(run_dir, local_files_only=True, **NO_REMOTE_CODE)
    text_tower = text_tokenizer = None
    if info.get("text_tower"):
        text_tower = guard.load_pretrained(CLIPTextModelWithProjection, run_dir / "text")
        with guard.loading(run_dir / "text", what="tokenizer files"):
            text_tokenizer = AutoTokenizer.from_pretrained(run_dir / "text", local_files_only=True, **NO_REMOTE_CODE)
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

