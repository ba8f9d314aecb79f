"""Run configuration: dataclasses with presets, YAML load/save and command-line overrides."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from capalign.errors import UserError
from capalign.usertext import read_text
from capalign.models import registry


def setting(default, help: str, **kwargs):
    """A config field whose help text lives in its metadata: the one place it is written (the CLI
    options, YAML docs and `capalign.yaml` all read it from here)."""
    if isinstance(default, type):
        return field(default_factory=default, metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    """What to build. Backbones are Hugging Face names or local paths; None builds from config."""

    preset: str = setting("tiny", "Model preset (a name in PRESETS; default tiny).")
    arch: str = setting("cross-attention", "cross-attention | prefix | contrastive")
    vision: str | None = setting(None, "Vision encoder: Hugging Face name or local folder (None: a small ViT from config).")
    decoder: str | None = setting(None, "Caption decoder (causal LM): Hugging Face name or local folder (None: a small GPT-2 from config).")
    freeze_vision: bool = setting(False, "Keep the vision encoder fixed (its features are cached).")
    freeze_decoder: bool = setting(False, "Keep the decoder fixed (cross-attention layers still train).")
    image_size: int = setting(64, "Image side in pixels for models built from config.")
    patch_size: int = setting(16, "ViT patch size for a vision encoder built from config.")
    vision_hidden: int = setting(128, "Width of a vision encoder built from config.")
    vision_layers: int = setting(4, "Layers of a vision encoder built from config.")
    decoder_hidden: int = setting(128, "Width of a decoder built from config.")
    decoder_layers: int = setting(3, "Layers of a decoder built from config.")
    heads: int = setting(4, "Attention heads of the parts built from config.")
    projection_dim: int = setting(64, "Width of the contrastive head's shared space.")
    max_caption_tokens: int = setting(24, "Most tokens per caption (EOS included) in training and generation.")
    text_encoder: str | None = setting(None, "Frozen CLIP text tower for caption features: name or folder.")
    freeze_text: bool = setting(True, "Keep the CLIP text tower fixed.")
    mapper: str = setting("mlp", "Prefix architecture's mapping network: mlp | transformer.")
    prefix_length: int = setting(10, "Prefix embeddings the mapper produces.")
    mapper_layers: int = setting(8, "Layers of the transformer mapper.")
    mapper_heads: int = setting(8, "Attention heads of the transformer mapper.")
    dropout: float | None = setting(None, "Dropout of the parts built from config (None: the transformers defaults).")


@dataclass
class TrainConfig:
    """Optimisation settings shared by pretrain and align."""

    epochs: int = setting(3, "Passes over the training data.")
    max_steps: int | None = setting(None, "Stop after this many optimiser steps (overrides epochs).")
    batch_size: int = setting(64, "Global batch size (split over processes).")
    lr: float = setting(1e-3, "Peak learning rate (AdamW, cosine schedule with warm-up).")
    weight_decay: float = setting(0.01, "Decoupled weight decay of weight matrices.")
    warmup_ratio: float = setting(0.05, "Share of the steps spent warming the learning rate up.")
    grad_clip: float = setting(1.0, "Gradient norm clipping threshold.")
    grad_accum: int = setting(1, "Micro-batches per optimiser step.")
    mixed_precision: str = setting("no", "no | fp16 | bf16")
    seed: int = setting(0, "Seed of initialisation, data order and sampling.")
    device: str | None = setting(None, "auto (the accelerator when present) | cpu | cuda | cuda:N | mps.")
    contrastive_weight: float = setting(0.5, "Weight of the image–text InfoNCE term.")
    caption_weight: float = setting(1.0, "Weight of the captioning cross-entropy.")
    cosine_weight: float = setting(0.0, "Weight of the cosine alignment term (seed 003; 0 = off).")
    diversity_weight: float = setting(0.0, "Weight of the caption diversity term (seed 003; 0 = off).")
    augment: bool = setting(False, "Flip / colour-jitter / rotate training images (seed 002).")
    feature_cache: bool = setting(True, "Cache a frozen vision encoder's outputs on disk.")
    cache_dir: str | None = setting(None, "Folder of the feature cache (default: .cache/features beside the dataset; shared storage for several machines).")
    select: str | None = setting(None, "Validation metric for best-metric/: cider (default), cider+0.5*bleu4, top1, none.")
    val_images: int = setting(100, "Validation images the selection metric is computed on.")
    patience: int | None = setting(None, "Stop after this many validations without a lower validation loss.")
    tracker: str | None = setting(None, "tensorboard | wandb (through accelerate).")
    log_every: int = setting(10, "Steps between metrics.jsonl records.")
    checkpoint_every: int = setting(200, "Steps between resume checkpoints.")
    keep_checkpoints: int = setting(2, "Resume checkpoints kept (the newest ones).")
    eval_every: int = setting(200, "Steps between validations.")
    streaming: bool = setting(False, "Read --data as a Hugging Face dataset in streaming mode (owner/name or a local folder of data files), unprepared; .tar shards always stream. Needs --max-steps.")
    val_data: str | None = setting(None, "Validation data for a streamed --data (shards or, with --streaming, a dataset): its first 512 samples are held in memory (default: the shards named val/validation, or the dataset's validation split).")
    shuffle_buffer: int = setting(256, "Streamed samples held (encoded) for shuffling, per process and loader worker.")


@dataclass
class AlignConfig:
    """Stage-2 settings (TRL's names where TRL has one): DPO-family preference optimisation, or
    self-critical sequence training (`method: scst`)."""

    method: str = setting("dpo", "Stage-2 method: dpo (preference pairs) | scst (self-critical sequence training: sampled captions scored by --reward against a baseline; ignores the pair settings and rounds).")
    beta: float = setting(0.1, "Strength of the pull towards the reference (dpo: the DPO beta, > 0; scst: weight of the per-token KL estimate against the frozen pretrained model, 0 = off).")
    loss: str = setting("sigmoid", "sigmoid | ipo | hinge | robust")
    label_smoothing: float = setting(0.0, "Robust / conservative DPO noise rate.")
    sft_weight: float = setting(0.0, "Weight of a supervised loss on the chosen caption.")
    pairs: str = setting("auto", "Where pairs come from: auto | corrupted | a pairs file | a prepared preference dataset.")
    lr: float = setting(5e-5, "Stage-2 peak learning rate.")
    epochs: int = setting(1, "Passes over each round's pairs.")
    max_steps: int | None = setting(None, "Stop each round after this many optimiser steps.")
    batch_size: int = setting(32, "Pairs per batch.")
    lora_rank: int = setting(0, "Train rank-N LoRA adapters on the decoder only (0 = full tuning).")
    rounds: int = setting(1, "Iterative DPO: rounds of fresh on-policy pairs.")
    contrastive_weight: float = setting(0.5, "Weight of an InfoNCE term on (image, chosen caption) that keeps the contrastive head (trainable in stage 2) matched to the features alignment moves; 0 freezes the head.")
    freeze_vision: bool | None = setting(None, "Freeze the vision encoder in stage 2 (None: as the pretrained run had it).")
    pair_scorer: str = setting("pretrained", "Whose contrastive head the pair ranker uses in every round: pretrained (the pretrained run, frozen) | policy.")
    weight_decay: float = setting(0.0, "Stage-2 decoupled weight decay.")
    warmup_ratio: float = setting(0.1, "Share of stage-2 steps spent warming the learning rate up.")
    log_every: int = setting(5, "Stage-2 steps between metrics.jsonl records.")
    eval_every: int = setting(50, "Stage-2 steps between held-out pair evaluations.")
    reference: str = setting("pretrained", "Each round's frozen reference: pretrained (the pretrained run) | previous (the previous round's policy).")
    reward: str = setting("cider", "scst reward, a weighted sum of cider (CIDEr-D against the image's references), clipscore (the run's contrastive head) and hallucination (hallucinated mentions; shapes data): e.g. cider, cider:1,clipscore:0.5, cider:1,hallucination:-1.")
    baseline: str = setting("mean", "scst baseline: mean (the other samples of the same image, as RLOO / new SCST) | greedy (the greedy caption's reward, classic SCST).")
    num_samples: int = setting(5, "scst: captions sampled per image each step.")
    candidate_temperature: float = setting(1.0, "dpo auto pairs: sampling temperature of the policy's candidate captions (> 0).")
    candidate_top_k: int = setting(0, "dpo auto pairs: sample candidates from the k likeliest tokens only (0 = no filter).")
    candidate_top_p: float = setting(1.0, "dpo auto pairs: sample candidates from the smallest token set holding this probability (nucleus; 1 = no filter).")
    disable_dropout: bool = setting(True, "Turn the policy's dropout off in stage 2, as TRL's DPOTrainer does by default: the reference's log-probs are taken without dropout, so the policy's should be too.")


@dataclass
class RunConfig:
    """Everything a run needs; saved resolved as `capalign.yaml` in the run folder."""

    data: str = setting("shapes", "Prepared dataset folder or source name.")
    model: ModelConfig = setting(ModelConfig, "What to build.")
    train: TrainConfig = setting(TrainConfig, "Optimisation settings.")
    align: AlignConfig = setting(AlignConfig, "Stage-2 settings.")


def help_for(key: str) -> str:
    """The help text of a config field, by dotted key (`train.lr`)."""
    section, _, name = key.rpartition(".")
    cls = {"": RunConfig, "model": ModelConfig, "train": TrainConfig, "align": AlignConfig}[section]
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


# Each preset sets model fields and, where its scale needs them, train/align defaults.
# The one spelling of the default CLIP checkpoint (presets, CLIPScore, the CLIP text tower).
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

TRACKERS = ("tensorboard", "wandb")

LOSSES = ("sigmoid", "ipo", "hinge", "robust")
METHODS = ("dpo", "scst")
BASELINES = ("mean", "greedy")
REWARD_TERMS = ("cider", "clipscore", "hallucination")


def parse_reward(spec: str) -> dict[str, float]:
    """`cider`, `cider:1,clipscore:0.5` → {term: weight}; a term without a weight weighs 1."""
    example = "e.g. cider or cider:1,hallucination:-1"
    terms: dict[str, float] = {}
    for part in str(spec).split(","):
        name, _, weight = part.strip().partition(":")
        name = name.strip()
        if name not in REWARD_TERMS:
            raise UserError(f"--reward: unknown term '{name}' in '{spec}'; the terms are {', '.join(REWARD_TERMS)} ({example}).")
        if name in terms:
            raise UserError(f"--reward: '{name}' appears twice in '{spec}' ({example}).")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise UserError(f"--reward: the weight of '{name}' must be a number, got '{weight.strip()}' ({example}).") from None
        if not math.isfinite(value) or value == 0:
            raise UserError(f"--reward: the weight of '{name}' must be a finite non-zero number, got {weight.strip()} ({example}).")
        terms[name] = value
    return terms


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


def build_config(preset: str | None = None, config_file: Path | None = None, overrides: dict | None = None,
                 base: RunConfig | None = None) -> RunConfig:
    """Preset (or `base`: a run folder's resolved config, for the stages after that run), then YAML
    file, then command-line overrides (`{"train": {"lr": 0.1}}`), then validation."""
    loaded = _read_yaml(config_file) if config_file is not None else {}
    if base is not None:
        config = copy.deepcopy(base)
    else:
        config = RunConfig()
        _apply_preset(config, preset or loaded.get("model", {}).get("preset"))
    _merge(config, loaded, "")
    _merge(config, overrides or {}, "")
    validate(config)
    return config


def _read_yaml(config_file: Path) -> dict:
    path = Path(config_file)
    if not path.is_file():
        raise UserError(f"Config file {path} does not exist.")
    try:
        loaded = yaml.safe_load(read_text(path, "config file")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"Config file {path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if not isinstance(loaded, dict):
        raise UserError(f"Config file {path} must hold a mapping at the top level.")
    return loaded


def _apply_preset(config: RunConfig, preset: str | None) -> None:
    name = preset or "tiny"
    if name not in PRESETS:
        raise UserError(f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    _merge(config.model, {"preset": name}, "model.")
    _merge(config, PRESETS[name], "")


def validate(config: RunConfig) -> None:
    """Reject values no run can use, with one clear sentence."""
    arch_problem = registry.config_problem(config.model)
    checks = [
        (config.train.batch_size > 0, "--batch-size must be positive"),
        (config.train.lr > 0, "--lr must be positive"),
        (config.train.epochs > 0, "--epochs must be positive"),
        (config.train.max_steps is None or config.train.max_steps > 0, "--max-steps must be positive"),
        (config.align.max_steps is None or config.align.max_steps > 0, "--max-steps must be positive"),
        (config.align.method in METHODS, f"--method must be one of {', '.join(METHODS)} (got {config.align.method})"),
        (config.align.beta > 0 or (config.align.method == "scst" and config.align.beta == 0),
         f"--beta must be positive (0 turns the KL pull off with --method scst; got {config.align.beta})"),
        (config.align.baseline in BASELINES, f"--baseline must be one of {', '.join(BASELINES)} (got {config.align.baseline})"),
        (config.align.num_samples >= (2 if config.align.baseline == "mean" else 1),
         f"--num-samples must be at least 2 with --baseline mean (the other samples are the baseline), at least 1 with greedy (got {config.align.num_samples})"),
        (math.isfinite(config.align.candidate_temperature) and config.align.candidate_temperature > 0,
         f"--candidate-temperature must be a finite number above 0 (got {config.align.candidate_temperature})"),
        (config.align.candidate_top_k >= 0, f"--candidate-top-k must be 0 (off) or more (got {config.align.candidate_top_k})"),
        (0 < config.align.candidate_top_p <= 1, f"--candidate-top-p must be in (0, 1] (got {config.align.candidate_top_p})"),
        (config.align.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)} (got {config.align.loss})"),
        (0 <= config.align.label_smoothing < 0.5, "--label-smoothing must be in [0, 0.5)"),
        (config.align.sft_weight >= 0, "--sft-weight must not be negative"),
        (config.align.lora_rank >= 0, "--lora-rank must not be negative"),
        (config.align.rounds >= 1, "--rounds must be at least 1"),
        (config.align.contrastive_weight >= 0, "align.contrastive_weight must not be negative"),
        (config.align.pair_scorer in ("pretrained", "policy"), f"align.pair_scorer must be pretrained or policy (got {config.align.pair_scorer})"),
        (config.align.reference in ("pretrained", "previous"), f"align.reference must be pretrained or previous (got {config.align.reference})"),
        (config.train.mixed_precision in ("no", "fp16", "bf16"), "--mixed-precision must be no, fp16 or bf16"),
        (arch_problem is None, arch_problem),
        (config.model.mapper in ("mlp", "transformer"), f"model.mapper must be mlp or transformer (got {config.model.mapper})"),
        (config.model.prefix_length > 0, "model.prefix_length must be positive"),
        (config.train.tracker in (None, *TRACKERS), f"--tracker must be one of {', '.join(TRACKERS)}"),
        (config.train.patience is None or config.train.patience > 0, "--patience must be positive"),
        (config.train.grad_accum > 0, "--grad-accum must be positive"),
        (config.train.keep_checkpoints > 0, "train.keep_checkpoints must be at least 1"),
        (config.train.val_images > 0, "train.val_images must be positive"),
        (config.train.shuffle_buffer > 0, "--shuffle-buffer must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message + ".")
    parse_reward(config.align.reward)


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


_SEAL = "# capalign resolved config; sha256 of the lines below: "


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config, sealed by a first-line checksum so that a cut or altered copy is
    told from a complete one (a half file is still valid YAML and would fill the rest with defaults)."""
    body = yaml.safe_dump(to_dict(config), sort_keys=False)
    Path(path).write_text(f"{_SEAL}{hashlib.sha256(body.encode()).hexdigest()}\n{body}")


def load_config(path: Path) -> RunConfig:
    """Read a run folder's resolved config back; one without a seal (written before seals) is read as is."""
    text = read_text(path, "config file")
    if text.startswith(_SEAL):
        seal, _, body = text.partition("\n")
        if hashlib.sha256(body.encode()).hexdigest() != seal[len(_SEAL):].strip():
            raise UserError(f"{path} is damaged or was edited (it differs from the checksum written with it); "
                            "put settings in a --config file instead, or start afresh without that run folder.")
    config = RunConfig()
    _merge(config, _read_yaml(path), "")  # a damaged file: one line, as a --config file
    return config
