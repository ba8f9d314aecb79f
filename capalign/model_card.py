"""The model card (`README.md`) of a finished run folder: Hugging Face metadata (YAML front matter,
written by huggingface_hub's ModelCardData, model-index from its EvalResults) followed by what the run is, how it was trained, how to load it and what it cannot do.

Everything comes from files the run already holds — `capalign.yaml` (the resolved config),
`run.json`, `capalign_model.json`, `alignment_report.json` and `evaluations.json` (what `capalign
evaluate --model RUN` measured) — so the card can be rewritten at any time (`write_model_card`);
`pretrain`, `align`, `evaluate --model` and `push` do so.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCardData

from capalign import __version__
from capalign.errors import CapalignError
from capalign.models import registry
from capalign.runs import CONFIG_NAME, MODEL_DESCRIPTION, RUN_INFO, atomic_write_text

CARD_NAME = "README.md"
EVALUATIONS = "evaluations.json"  # {"DATA/SPLIT": {"images": n, "metrics": {...}}}, by `capalign evaluate --model`
ALIGN_REPORT = "alignment_report.json"

# Metric name -> the `type` Hugging Face's model-index uses (lower-case ids of the evaluate library where one exists).
_HF_METRIC = {"BLEU-1": "bleu", "BLEU-2": "bleu", "BLEU-3": "bleu", "BLEU-4": "bleu", "METEOR": "meteor",
              "ROUGE-L": "rouge", "CIDEr": "cider", "SPICE": "spice", "BERTScore-F1": "bertscore"}
_ARCH_TAG = {"cross-attention": "vision-encoder-decoder", "prefix": "clipcap", "contrastive": "contrastive"}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _numbers(run_dir: Path) -> list[tuple[str, str, int | None, dict[str, float]]]:
    """(dataset, split, images, {metric: value}) for every evaluation the run folder records."""
    found = []
    report = _read_json(run_dir / ALIGN_REPORT)
    if report and isinstance(report.get("aligned"), dict):
        config = _read_json(run_dir / RUN_INFO) or {}
        numbers = {k: float(v) for k, v in report["aligned"].items() if isinstance(v, (int, float))}
        numbers["Ranker win rate vs reference"] = float(report.get("win_rate", 0.0))
        found.append((str(config.get("data", "?")), "test (alignment report)", report.get("split_images"), numbers))
    for key, entry in (_read_json(run_dir / EVALUATIONS) or {}).items():
        data, _, split = key.rpartition("/")
        metrics = {k: float(v) for k, v in entry.get("metrics", {}).items() if isinstance(v, (int, float))}
        if metrics:
            found.append((data, split, entry.get("images"), metrics))
    return found


def _name(value: str | None, otherwise: str) -> str:
    """A backbone's name in code style, or a description when the preset built it from a config."""
    return f"`{value}`" if value else otherwise


def _eval_results(numbers) -> list[EvalResult]:
    """One EvalResult per metric; huggingface_hub groups them into the model-index by dataset and split."""
    return [EvalResult(task_type="image-to-text", task_name="Image Captioning", dataset_type=data, dataset_name=data,
                       dataset_split=split, metric_type=_metric_id(m), metric_name=m, metric_value=round(v, 4))
            for data, split, _, metrics in numbers for m, v in metrics.items()]


def _metric_id(metric: str) -> str:
    return _HF_METRIC.get(metric, metric.lower().replace(" ", "_"))


def _stage(kind: str, scst: bool, align: dict) -> str:
    if kind != "align":
        return "stage 1: captioning + contrastive pretraining"
    if scst:
        return f"stage 2: self-critical sequence training (SCST, reward {align.get('reward')}) of a pretrained run"
    return "stage 2: preference alignment (DPO) of a pretrained run"


def render_model_card(run_dir: Path) -> str:
    """The card's text (front matter + body) from what the run folder holds."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / CONFIG_NAME).read_text()) if (run_dir / CONFIG_NAME).is_file() else {}
    info = _read_json(run_dir / RUN_INFO) or {}
    description = _read_json(run_dir / MODEL_DESCRIPTION) or {"arch": "cross-attention"}
    model, train, align = config.get("model", {}), config.get("train", {}), config.get("align", {})
    arch = description.get("arch", model.get("arch", "cross-attention"))
    kind = info.get("kind", "pretrain")
    data = str(info.get("data") or config.get("data") or "shapes")
    numbers = _numbers(run_dir)
    architecture = registry.find(arch)
    plain = architecture is not None and architecture.transformers_class is not None
    captions = architecture is None or architecture.captions

    tags = ["capalign", "image-captioning", "image-to-text", _ARCH_TAG.get(arch, arch)]
    scst = kind == "align" and align.get("method") == "scst"
    if kind == "align":
        tags += ["scst", "reinforcement-learning"] if scst else ["dpo", "preference-alignment"]
    meta = ModelCardData(
        library_name="transformers" if plain else "capalign", pipeline_tag="image-to-text", tags=tags,
        datasets=[data] if "/" in data and not Path(data).exists() else None,  # a Hub dataset id (local folders: the body)
        metrics=sorted({_metric_id(m) for *_, ms in numbers for m in ms}) or None,
        model_name=run_dir.name if numbers else None, eval_results=_eval_results(numbers) or None,
    )

    lines = ["---", meta.to_yaml(), "---", "",
             f"# {run_dir.name}", "",
             f"An image captioner trained with capalign {__version__} "
             f"({_stage(kind, scst, align)}).",
             "", "## Model", "",
             f"- Preset: `{model.get('preset', '?')}`; architecture: **{arch}**",
             f"- Vision encoder: {_name(model.get('vision'), 'a small ViT built from the preset config')}"
             f"{' (frozen)' if description.get('frozen', {}).get('vision') else ''}",
             f"- Decoder: {_name(model.get('decoder'), 'a small GPT-2 built from the preset config' if captions else 'none')}"
             f"{' (frozen)' if description.get('frozen', {}).get('decoder') else ''}"]
    if description.get("mapper"):
        lines.append(f"- Mapper: {json.dumps(description.get('mapper', {}))} (image embedding → {model.get('prefix_length')} prefix embeddings)")
    if description.get("text_tower"):
        lines.append(f"- Text tower for the contrastive head: `{model.get('text_encoder')}` (frozen, in `text/`)")
    if (run_dir / "contrastive_head.safetensors").is_file():
        lines.append("- Contrastive head (`contrastive_head.safetensors`): image–text cosine similarity")
    lines += ["", "## Data and training", "", f"- Data: `{data}`"]
    if scst:
        lines += [f"- Aligned from `{info.get('reference', '?')}` by SCST: reward `{align.get('reward')}`"
                  f"{' judged by ' + repr(align['reward_clip']) if align.get('reward_clip') else ''}, baseline "
                  f"{align.get('baseline')}, {align.get('num_samples')} samples per image, KL beta {align.get('beta')}, "
                  f"lr {align.get('lr')}, batch {align.get('batch_size')}, LoRA rank {align.get('lora_rank')}, "
                  f"dropout {'off' if align.get('disable_dropout') else 'on'}",
                  f"- Steps: {info.get('steps', '?')}"]
    elif kind == "align":
        lines += [f"- Aligned from `{info.get('reference', '?')}` with loss `{align.get('loss')}`, beta {align.get('beta')}, "
                  f"SFT weight {align.get('sft_weight')}, pairs `{align.get('pairs')}`, {align.get('rounds')} round(s), "
                  f"lr {align.get('lr')}, batch {align.get('batch_size')}, LoRA rank {align.get('lora_rank')}, "
                  f"dropout {'off' if align.get('disable_dropout') else 'on'}",
                  f"- Steps: {info.get('steps', '?')}"]
    elif info.get("converted_from"):
        lines.append(f"- Converted from the ClipCap checkpoint `{Path(info['converted_from']).name}` by `capalign fetch --model` "
                     "(trained by ClipCap's own train.py, not by capalign)")
    else:
        lines += [f"- Steps: {info.get('steps', '?')} (batch {train.get('batch_size')}, lr {train.get('lr')}, "
                  f"weight decay {train.get('weight_decay')}, warm-up {train.get('warmup_ratio')}, mixed precision "
                  f"{train.get('mixed_precision')}, seed {train.get('seed')})",
                  f"- Loss: caption CE × {train.get('caption_weight')} + InfoNCE × {train.get('contrastive_weight')} "
                  f"+ cosine × {train.get('cosine_weight')} + diversity × {train.get('diversity_weight')}"]
        if info.get("best_val_loss") is not None:
            lines.append(f"- Best validation loss: {info['best_val_loss']:.4f}")
    lines.append("- The full resolved configuration is `capalign.yaml`; the training curves are `metrics.jsonl` / `curves.png`.")

    lines += ["", "## Evaluation", ""]
    if numbers:
        for data_name, split, images, metrics in numbers:
            lines.append(f"On `{data_name}` / {split}{f' ({images} images)' if images else ''}:")
            lines.append("")
            lines += ["| metric | value |", "|---|---|"] + [f"| {m} | {v:.4f} |" for m, v in metrics.items()]
            lines.append("")
    else:
        lines += ["Not evaluated yet: `capalign evaluate --model RUN` records its numbers here.", ""]

    lines += ["## How to use", "", "With capalign (`pip install capalign`):", "", "```python",
              "from capalign import Captioner", "",
              f'captioner = Captioner.from_pretrained("{run_dir.name}")  # a run folder or a Hub id',
              'print(captioner.caption(["photo.jpg"], num_beams=3))']
    if (run_dir / "contrastive_head.safetensors").is_file():
        lines.append('print(captioner.score(["photo.jpg"], ["a red circle", "a blue square"]))  # cosine similarities')
    lines += ["```", ""]
    if plain:
        lines += ["With plain transformers (no capalign needed):", "", "```python",
                  "import torch",
                  "from PIL import Image",
                  f"from transformers import AutoImageProcessor, AutoTokenizer, {architecture.transformers_class}", "",
                  f'run = "{run_dir.name}"  # this folder, or its Hub id',
                  f"model = {architecture.transformers_class}.from_pretrained(run)",
                  "tokenizer = AutoTokenizer.from_pretrained(run)",
                  "processor = AutoImageProcessor.from_pretrained(run)",
                  'image = Image.open("photo.jpg").convert("RGB")',
                  'pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]',
                  "with torch.no_grad():",
                  f"    ids = model.generate(pixel_values=pixel_values, max_new_tokens={model.get('max_caption_tokens') or 24}, num_beams=3)",
                  "print(tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip())",
                  "```", "",
                  "The contrastive head (`contrastive_head.safetensors`) is capalign's own; image–text scores need capalign."]
    else:
        lines += [f"This is a **{arch}** model: its parts (`vision/`, `decoder/`, `mapper.safetensors`"
                  + (", `text/`" if description.get("text_tower") else "")
                  + ", `capalign_model.json`) are put together by capalign; it does not load in plain transformers. "
                  "Use `capalign.Captioner.from_pretrained` or `capalign.models.io.load_captioner`."]
        if not captions:
            lines.append("It has no caption decoder: it scores and retrieves (`Captioner.score`) but cannot caption.")
    lines += ["", "## Limitations", "",
              f"- Trained on `{data}` only; captions describe what that data describes, in its words, and are not "
              "reliable on other kinds of images.",
              "- Captions can name objects, colours or counts the image does not have (hallucination); check them "
              "before relying on them.",
              "- Automatic metrics (BLEU, CIDEr, ...) measure overlap with reference captions, not correctness."]
    if kind == "align":
        lines.append("- Preference alignment optimises what the pair ranker (or the preference data) rewards; "
                     "it can trade wording diversity for those rewards.")
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: Path) -> Path:
    """(Re)write RUN/README.md from the run folder's files; returns its path."""
    path = Path(run_dir) / CARD_NAME
    atomic_write_text(path, render_model_card(run_dir))
    return path


def record_evaluation(run_dir: Path, data: str, split: str, images: int, metrics: dict[str, float]) -> str | None:
    """Keep one evaluation's summary in RUN/evaluations.json (by data/split) and refresh the card.
    Returns None, or why the folder could not be written (read-only, full): the scores themselves
    are the caller's to report either way."""
    path = Path(run_dir) / EVALUATIONS
    entries = _read_json(path) or {}
    entries[f"{data}/{split}"] = {"images": images, "metrics": {k: float(v) for k, v in metrics.items()}}
    try:
        atomic_write_text(path, json.dumps(entries, indent=1))
        write_model_card(run_dir)
    except CapalignError as exc:
        failure = exc.__context__  # the OSError atomic_write_text turned into a message with a remedy for --out
        return f"cannot write {getattr(failure, 'filename', None) or path}: {getattr(failure, 'strerror', None) or exc}"
    return None
