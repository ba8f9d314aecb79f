"""Run configuration: dataclasses with presets, YAML load/save and command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from capalign.errors import UserError


@dataclass
class ModelConfig:
    """What to build. Backbones are Hugging Face names or local paths; None builds from config."""

    preset: str = "tiny"
    arch: str = "cross-attention"
    vision: str | None = None
    decoder: str | None = None
    freeze_vision: bool = False
    freeze_decoder: bool = False
    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 4
    decoder_hidden: int = 128
    decoder_layers: int = 3
    heads: int = 4
    projection_dim: int = 64
    max_caption_tokens: int = 24
    # A frozen CLIP text tower (name or path) for caption features (vit-scratch, mobilenet-gpt2).
    text_encoder: str | None = None
    freeze_text: bool = True
    # Prefix (ClipCap) architecture: mapping network mlp | transformer, prefix embeddings, mapper depth.
    mapper: str = "mlp"
    prefix_length: int = 10
    mapper_layers: int = 8
    mapper_heads: int = 8
    # Dropout of the parts built from configs (None: the transformers defaults).
    dropout: float | None = None


@dataclass
class TrainConfig:
    """Optimisation settings shared by pretrain and align."""

    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"
    seed: int = 0
    contrastive_weight: float = 0.5
    # Optional terms (seed 003's CLIP-guided objectives); weight 0 turns a term off.
    caption_weight: float = 1.0
    cosine_weight: float = 0.0
    diversity_weight: float = 0.0
    # Seed 002's augmentations (flip, colour jitter, rotation) on training images.
    augment: bool = False
    # Cache a frozen vision encoder's outputs on disk (per dataset, encoder and preprocessing).
    feature_cache: bool = True
    # Best-model selection by a validation metric: e.g. "cider", "cider+0.5*bleu4", "top1"
    # (None: CIDEr for captioners, top-1 retrieval for contrastive-only models); "none" turns it off.
    select: str | None = None
    val_images: int = 100
    # Early stopping: stop after this many validations without a lower validation loss.
    patience: int | None = None
    # Experiment tracker through accelerate: tensorboard | wandb.
    tracker: str | None = None
    log_every: int = 10
    checkpoint_every: int = 200
    eval_every: int = 200


@dataclass
class AlignConfig:
    """Stage-2 preference optimisation settings (TRL's names where TRL has one)."""

    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    pairs: str = "auto"
    lr: float = 5e-5
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    lora_rank: int = 0  # > 0: train LoRA adapters on the decoder only (peft), merged when saved
    rounds: int = 1  # > 1: iterative DPO, fresh on-policy pairs and reference each round


@dataclass
class RunConfig:
    """Everything a run needs; saved resolved as `capalign.yaml` in the run folder."""

    data: str = "shapes"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)


# Each preset sets model fields and, where its scale needs them, train/align defaults.
CLIP_B32 = "openai/clip-vit-base-patch32"

PRESETS: dict[str, dict] = {
    # A from-scratch model this small needs a large stage-2 step size; the supervised term on the
    # chosen caption keeps DPO from degrading fluency, and a second round of fresh on-policy pairs
    # removes most remaining hallucinations (measured on shapes, see the README).
    "tiny": {"align": {"lr": 1e-3, "sft_weight": 1.0, "epochs": 4, "rounds": 2}},
    # Seeds 000 and 001: frozen CLIP ViT-B/32 + GPT-2 with cross-attention.
    "clip-gpt2": {
        "model": {"arch": "cross-attention", "vision": CLIP_B32, "decoder": "gpt2", "freeze_vision": True,
                  "image_size": 224, "projection_dim": 512, "max_caption_tokens": 32},
        "train": {"lr": 5e-5, "batch_size": 32, "epochs": 10, "contrastive_weight": 0.5},
        "align": {"lr": 1e-5, "batch_size": 8, "epochs": 5},
    },
    # Seed 000's text side: GPT-2 Medium.
    "clip-gpt2-medium": {
        "model": {"arch": "cross-attention", "vision": CLIP_B32, "decoder": "gpt2-medium", "freeze_vision": True,
                  "image_size": 224, "projection_dim": 512, "max_caption_tokens": 32},
        "train": {"lr": 5e-5, "batch_size": 8, "grad_accum": 4, "epochs": 10, "contrastive_weight": 0.5},
        "align": {"lr": 1e-5, "batch_size": 8, "epochs": 5},
    },
    # Seed 004 (ClipCap, transformer mapper): CLIP → 10 prefix embeddings → frozen GPT-2.
    "clipcap": {
        "model": {"arch": "prefix", "vision": CLIP_B32, "decoder": "gpt2", "freeze_vision": True,
                  "freeze_decoder": True, "mapper": "transformer", "prefix_length": 10, "mapper_layers": 8,
                  "image_size": 224, "max_caption_tokens": 32},
        "train": {"lr": 2e-5, "batch_size": 40, "epochs": 10, "contrastive_weight": 0.0},
        "align": {"lr": 1e-5, "batch_size": 8},
    },
    # ClipCap's other variant: MLP mapper, GPT-2 tuned.
    "clipcap-mlp": {
        "model": {"arch": "prefix", "vision": CLIP_B32, "decoder": "gpt2", "freeze_vision": True,
                  "freeze_decoder": False, "mapper": "mlp", "prefix_length": 10, "image_size": 224,
                  "max_caption_tokens": 32},
        "train": {"lr": 2e-5, "batch_size": 40, "epochs": 10, "contrastive_weight": 0.0},
        "align": {"lr": 1e-5, "batch_size": 8},
    },
    # Seed 003: MobileNetV2 features → prefix mapper → DistilGPT2, with CLIP-guided terms (cosine
    # alignment and contrastive against a frozen CLIP text tower, caption diversity) and early stopping.
    "mobilenet-gpt2": {
        "model": {"arch": "prefix", "vision": "google/mobilenet_v2_1.0_224", "decoder": "distilgpt2",
                  "text_encoder": CLIP_B32, "freeze_vision": True, "freeze_decoder": False, "mapper": "mlp",
                  "prefix_length": 10, "image_size": 224, "projection_dim": 512, "max_caption_tokens": 32},
        "train": {"lr": 1e-4, "batch_size": 32, "epochs": 50, "contrastive_weight": 1.0, "cosine_weight": 1.0,
                  "diversity_weight": 0.1, "patience": 5},
        "align": {"lr": 1e-5, "batch_size": 8},
    },
    # Seed 002: a ViT trained from scratch against a frozen CLIP text encoder, contrastive only,
    # with flip / colour-jitter / rotation augmentation; judged by retrieval top-1/10/100.
    "vit-scratch": {
        "model": {"arch": "contrastive", "vision": None, "decoder": None, "text_encoder": CLIP_B32,
                  "image_size": 64, "patch_size": 8, "vision_hidden": 768, "vision_layers": 6, "heads": 12,
                  "projection_dim": 512},
        "train": {"lr": 1e-4, "batch_size": 32, "epochs": 20, "warmup_ratio": 0.1, "contrastive_weight": 1.0,
                  "caption_weight": 0.0, "augment": True, "select": "top1"},
    },
}

ARCHS = ("cross-attention", "prefix", "contrastive")
TRACKERS = ("tensorboard", "wandb")

LOSSES = ("sigmoid", "ipo", "hinge", "robust")


def _merge(target, values: dict, where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in names:
            raise UserError(f"Unknown config key '{where}{key}'; valid keys: {', '.join(names)}.")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"Config key '{where}{key}' must be a mapping.")
            _merge(current, value, f"{where}{key}.")
        else:
            setattr(target, key, value)


def build_config(preset: str | None = None, config_file: Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Preset, then YAML file, then command-line overrides (`{"train": {"lr": 0.1}}`), then validation."""
    config = RunConfig()
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"Config file {path} does not exist.")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"Config file {path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
        if not isinstance(loaded, dict):
            raise UserError(f"Config file {path} must hold a mapping at the top level.")
        preset = preset or loaded.get("model", {}).get("preset")
        _apply_preset(config, preset)
        _merge(config, loaded, "")
    else:
        _apply_preset(config, preset)
    _merge(config, overrides or {}, "")
    validate(config)
    return config


def _apply_preset(config: RunConfig, preset: str | None) -> None:
    name = preset or "tiny"
    if name not in PRESETS:
        raise UserError(f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    _merge(config.model, {"preset": name}, "model.")
    _merge(config, PRESETS[name], "")


def validate(config: RunConfig) -> None:
    """Reject values no run can use, with one clear sentence."""
    checks = [
        (config.train.batch_size > 0, "--batch-size must be positive"),
        (config.train.lr > 0, "--lr must be positive"),
        (config.train.epochs > 0, "--epochs must be positive"),
        (config.train.max_steps is None or config.train.max_steps > 0, "--max-steps must be positive"),
        (config.align.max_steps is None or config.align.max_steps > 0, "--max-steps must be positive"),
        (config.align.beta > 0, f"--beta must be positive (got {config.align.beta})"),
        (config.align.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)} (got {config.align.loss})"),
        (0 <= config.align.label_smoothing < 0.5, "--label-smoothing must be in [0, 0.5)"),
        (config.align.sft_weight >= 0, "--sft-weight must not be negative"),
        (config.align.lora_rank >= 0, "--lora-rank must not be negative"),
        (config.align.rounds >= 1, "--rounds must be at least 1"),
        (config.train.mixed_precision in ("no", "fp16", "bf16"), "--mixed-precision must be no, fp16 or bf16"),
        (config.model.arch in ARCHS, f"--arch must be one of {', '.join(ARCHS)} (got {config.model.arch})"),
        (config.model.mapper in ("mlp", "transformer"), f"model.mapper must be mlp or transformer (got {config.model.mapper})"),
        (config.model.prefix_length > 0, "model.prefix_length must be positive"),
        (config.model.arch != "contrastive" or config.model.text_encoder is not None,
         "the contrastive architecture needs a CLIP text tower: pass --text-encoder NAME_OR_PATH"),
        (config.train.tracker in (None, *TRACKERS), f"--tracker must be one of {', '.join(TRACKERS)}"),
        (config.train.patience is None or config.train.patience > 0, "--patience must be positive"),
        (config.train.grad_accum > 0, "--grad-accum must be positive"),
        (config.train.val_images > 0, "train.val_images must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message + ".")


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def save_config(config: RunConfig, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def load_config(path: Path) -> RunConfig:
    """Read a run folder's resolved config back."""
    config = RunConfig()
    _merge(config, yaml.safe_load(Path(path).read_text()) or {}, "")
    return config
