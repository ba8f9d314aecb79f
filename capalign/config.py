"""Run configuration: the settings dataclasses (one schema: capalign.schema), presets, YAML load/save
and command-line overrides.

The schedule settings both stages train with are declared once (`Schedule`); `TrainConfig` (stage 1
and the training engine) and `AlignConfig` (stage 2) extend it, each with its own defaults. The YAML
sections stay `data`, `model:`, `train:`, `align:`; stage 2 trains with `train`'s engine settings and
`align`'s schedule (`RunConfig.align_engine`)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from capalign.errors import ConfigError, MissingError
from capalign.models import registry
from capalign.schema import check, describe, restage, setting, unknown_key
from capalign.usertext import read_text

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
PRECISIONS = ("no", "fp16", "bf16")
LOSSES = ("sigmoid", "ipo", "hinge", "robust")
METHODS = ("dpo", "scst")
BASELINES = ("mean", "greedy")
REWARD_TERMS = ("cider", "clipscore", "hallucination")


@dataclass
class ModelConfig:
    """What to build. Backbones are Hugging Face names or local paths; None builds from config."""

    section = "model."  # how messages name this section's fields (a class attribute, not a field)

    preset: str = setting("tiny", "Model preset (its model settings and train/align defaults).", choices=tuple(PRESETS))
    arch: str = setting("cross-attention", "cross-attention | prefix | contrastive")
    vision: str | None = setting(None, "Vision encoder: Hugging Face name or local folder (None: a small ViT from config).")
    decoder: str | None = setting(None, "Caption decoder (causal LM): Hugging Face name or local folder (None: a small GPT-2 from config).")
    freeze_vision: bool = setting(False, "Keep the vision encoder fixed (its features are cached).")
    freeze_decoder: bool = setting(False, "Keep the decoder fixed (cross-attention layers still train).")
    image_size: int = setting(64, "Image side in pixels for models built from config.", at_least=1)
    patch_size: int = setting(16, "ViT patch size for a vision encoder built from config.", at_least=1)
    vision_hidden: int = setting(128, "Width of a vision encoder built from config.", at_least=1)
    vision_layers: int = setting(4, "Layers of a vision encoder built from config.", at_least=1)
    decoder_hidden: int = setting(128, "Width of a decoder built from config.", at_least=1)
    decoder_layers: int = setting(3, "Layers of a decoder built from config.", at_least=1)
    heads: int = setting(4, "Attention heads of the parts built from config.", at_least=1)
    projection_dim: int = setting(64, "Width of the contrastive head's shared space.", at_least=1)
    max_caption_tokens: int = setting(24, "Most tokens per caption (EOS included) in training and generation.", at_least=2)
    text_encoder: str | None = setting(None, "Frozen CLIP text tower for caption features: name or folder.")
    freeze_text: bool = setting(True, "Keep the CLIP text tower fixed.")
    mapper: str = setting("mlp", "Prefix architecture's mapping network.", choices=("mlp", "transformer"))
    prefix_length: int = setting(10, "Prefix embeddings the mapper produces.", at_least=1)
    mapper_layers: int = setting(8, "Layers of the transformer mapper.", at_least=1)
    mapper_heads: int = setting(8, "Attention heads of the transformer mapper.", at_least=1)
    dropout: float | None = setting(None, "Dropout of the parts built from config (None: the transformers defaults).",
                                    at_least=0, below=1)

    def __post_init__(self) -> None:
        check(self, self.section)


@dataclass
class Schedule:
    """The schedule and optimiser settings every training stage has, declared once; each stage's
    settings extend it (TrainConfig, AlignConfig), with its own defaults."""

    epochs: int = setting(3, "Passes over the training data.", at_least=1)
    max_steps: int | None = setting(None, "Stop after this many optimiser steps (overrides epochs).", at_least=1)
    batch_size: int = setting(64, "Global batch size (split over processes).", at_least=1)
    lr: float = setting(1e-3, "Peak learning rate (AdamW, cosine schedule with warm-up).", above=0)
    weight_decay: float = setting(0.01, "Decoupled weight decay of weight matrices.", at_least=0)
    warmup_ratio: float = setting(0.05, "Share of the steps spent warming the learning rate up.", at_least=0, at_most=1)
    log_every: int = setting(10, "Steps between metrics.jsonl records.", at_least=1)
    eval_every: int = setting(200, "Steps between validations.", at_least=1)

    section = ""

    def __post_init__(self) -> None:
        check(self, self.section)


@dataclass
class TrainConfig(Schedule):
    """Stage 1's settings: the schedule, the pretraining loss, and the engine settings (`engine`
    metadata) stage 2 trains with too."""

    section = "train."

    grad_clip: float = setting(1.0, "Gradient norm clipping threshold.", above=0, engine=True)
    grad_accum: int = setting(1, "Micro-batches per optimiser step.", at_least=1, engine=True)
    mixed_precision: str = setting("no", "Mixed precision (fp16 needs a CUDA GPU, bf16 a GPU or CPU that has it).",
                                   choices=PRECISIONS, engine=True)
    seed: int = setting(0, "Seed of initialisation, data order and sampling.", at_least=0, at_most=2**32 - 1, engine=True)
    device: str | None = setting(None, "auto (the accelerator when present) | cpu | cuda | cuda:N | mps.", engine=True)
    contrastive_weight: float = setting(0.5, "Weight of the image–text InfoNCE term.", at_least=0)
    caption_weight: float = setting(1.0, "Weight of the captioning cross-entropy.", at_least=0)
    cosine_weight: float = setting(0.0, "Weight of the cosine alignment term (seed 003; 0 = off).", at_least=0)
    diversity_weight: float = setting(0.0, "Weight of the caption diversity term (seed 003; 0 = off).", at_least=0)
    augment: bool = setting(False, "Flip / colour-jitter / rotate training images (seed 002).")
    feature_cache: bool = setting(True, "Cache a frozen vision encoder's outputs on disk.")
    cache_dir: str | None = setting(None, "Folder of the feature cache (default: .cache/features beside the dataset; shared storage for several machines).")
    select: str | None = setting(None, "Validation metric for best-metric/: cider (default), cider+0.5*bleu4, top1, none.")
    val_images: int = setting(100, "Validation images the selection metric (scst: the greedy validation) is computed on.",
                              at_least=1, engine=True)
    patience: int | None = setting(None, "Stop after this many validations without a lower validation loss.", at_least=1)
    tracker: str | None = setting(None, "Experiment tracker (through accelerate).", choices=TRACKERS, engine=True)
    checkpoint_every: int = setting(200, "Steps between resume checkpoints.", at_least=1, engine=True)
    keep_checkpoints: int = setting(2, "Resume checkpoints kept (the newest ones).", at_least=1, engine=True)
    streaming: bool = setting(False, "Read --data as a Hugging Face dataset in streaming mode (owner/name or a local folder of data files), unprepared; .tar shards always stream. Needs --max-steps (align's dpo instead reads --rounds windows of --stream-window images).", engine=True)
    val_data: str | None = setting(None, "Validation data for a streamed --data (shards or, with --streaming, a dataset): its first 512 samples are held in memory (default: the shards named val/validation, or the dataset's validation split).", engine=True)
    shuffle_buffer: int = setting(256, "Streamed samples held (encoded) for shuffling, per process and loader worker.", at_least=1, engine=True)


@dataclass
@restage(lr=5e-5, epochs=1, batch_size=32, weight_decay=0.0, warmup_ratio=0.1, log_every=5, eval_every=50)
class AlignConfig(Schedule):
    """Stage-2 settings (TRL's names where TRL has one): DPO-family preference optimisation, or
    self-critical sequence training (`method: scst`); its schedule (Schedule's fields, with stage 2's
    defaults) applies to each round, the engine settings come from `train`."""

    section = "align."

    method: str = setting("dpo", "Stage-2 method: dpo (preference pairs) | scst (self-critical sequence training: sampled captions scored by --reward against a baseline; ignores the pair settings and rounds).", choices=METHODS)
    beta: float = setting(0.1, "Strength of the pull towards the reference (dpo: the DPO beta, > 0; scst: weight of the per-token KL estimate against the frozen pretrained model, 0 = off).")
    loss: str = setting("sigmoid", "DPO loss.", choices=LOSSES)
    label_smoothing: float = setting(0.0, "Robust / conservative DPO noise rate.", at_least=0, below=0.5)
    sft_weight: float = setting(0.0, "Weight of a supervised (cross-entropy) loss: dpo, on the chosen caption; scst, on every reference of the image (the mixed ML + RL objective).", at_least=0)
    pairs: str = setting("auto", "Where pairs come from: auto | corrupted | a pairs file | a prepared preference dataset.")
    stream_window: int = setting(1000, "dpo on a streamed --data: images each round takes from the stream (round N the N-th window), held in memory while that round's pairs (--pairs auto) are built and trained on.", at_least=1)
    lora_rank: int = setting(0, "Train rank-N LoRA adapters on the decoder only (0 = full tuning).", at_least=0)
    rounds: int = setting(1, "Iterative DPO: rounds of fresh on-policy pairs.", at_least=1)
    contrastive_weight: float = setting(0.5, "Weight of an InfoNCE term on (image, chosen caption) that keeps the contrastive head (trainable in stage 2) matched to the features alignment moves; 0 freezes the head.", at_least=0)
    freeze_vision: bool | None = setting(None, "Freeze the vision encoder in stage 2 (None: as the pretrained run had it).")
    pair_scorer: str = setting("pretrained", "Whose contrastive head the pair ranker uses in every round: pretrained (the pretrained run, frozen) | policy.", choices=("pretrained", "policy"))
    reference: str = setting("pretrained", "Each round's frozen reference: pretrained (the pretrained run) | previous (the previous round's policy).", choices=("pretrained", "previous"))
    reward: str = setting("cider", "scst reward, a weighted sum of cider (CIDEr-D against the image's references; document frequencies from the training split, on a stream from its first 10,000 samples' references), clipscore (CLIP-S by --reward-clip or the run's contrastive head) and hallucination (hallucinated mentions; shapes data): e.g. cider, cider:1,clipscore:0.5, cider:1,hallucination:-1.")
    reward_clip: str | None = setting(None, "scst --reward clipscore: the CLIP model that judges, a Hugging Face name (cached) or local folder (None: the pretrained run's own contrastive head, frozen).")
    baseline: str = setting("mean", "scst baseline: mean (the other samples of the same image, as RLOO / new SCST) | greedy (the greedy caption's reward, classic SCST).", choices=BASELINES)
    num_samples: int = setting(5, "scst: captions sampled per image each step.", at_least=1)
    candidate_temperature: float = setting(1.0, "dpo auto pairs: sampling temperature of the policy's candidate captions (> 0).", above=0)
    candidate_top_k: int = setting(0, "dpo auto pairs: sample candidates from the k likeliest tokens only (0 = no filter).", at_least=0)
    candidate_top_p: float = setting(1.0, "dpo auto pairs: sample candidates from the smallest token set holding this probability (nucleus; 1 = no filter).", above=0, at_most=1)
    disable_dropout: bool = setting(True, "Turn the policy's dropout off in stage 2, as TRL's DPOTrainer does by default: the reference's log-probs are taken without dropout, so the policy's should be too.",
                                    flag="--disable-dropout/--keep-dropout")

    def __post_init__(self) -> None:
        check(self, self.section)
        if not (self.beta > 0 or (self.method == "scst" and self.beta == 0)):
            raise ConfigError(f"align.beta must be positive (0 turns the KL pull off with align.method scst; got {self.beta}).")
        if self.num_samples < (2 if self.baseline == "mean" else 1):
            raise ConfigError("align.num_samples must be at least 2 with align.baseline mean (the other samples are the "
                              f"baseline), at least 1 with greedy (got {self.num_samples}).")
        parse_reward(self.reward)


@dataclass
class RunConfig:
    """Everything a run needs; saved resolved as `capalign.yaml` in the run folder."""

    section = ""

    data: str = setting("shapes", "Prepared dataset folder or source name.")
    model: ModelConfig = setting(ModelConfig, "What to build.")
    train: TrainConfig = setting(TrainConfig, "Optimisation settings.")
    align: AlignConfig = setting(AlignConfig, "Stage-2 settings.")

    def __post_init__(self) -> None:
        check(self, self.section)

    def align_engine(self, **changes) -> TrainConfig:
        """The engine settings stage 2 trains with: `train`'s (precision, accumulation, clipping, seed,
        device, checkpoints), with the align section's schedule (every Schedule field), no early
        stopping, and `changes` (a round's seed)."""
        schedule = {f.name: getattr(self.align, f.name) for f in dataclasses.fields(Schedule)}
        return dataclasses.replace(self.train, **schedule, patience=None, **changes)


SECTIONS = {"": RunConfig, "model": ModelConfig, "train": TrainConfig, "align": AlignConfig}

# Stage-2 settings whose default depends on align.method: method -> preset -> the align settings that
# method trains with by default on that preset, filling only what the user did not set (build_config).
# SCST's were measured on the embedded default (bench/bench_embedded.py's SCST_SETTINGS; README "Which
# alignment method?"); elsewhere, and for DPO, the preset's align section applies, else AlignConfig's.
METHOD_DEFAULTS: dict[str, dict[str, dict]] = {
    "scst": {"tiny": {"lr": 5e-4, "batch_size": 16, "max_steps": 800, "contrastive_weight": 2.0, "sft_weight": 1.0}},
}
_BY_METHOD = frozenset(key for presets in METHOD_DEFAULTS.values() for defaults in presets.values() for key in defaults)


def method_default(method, key: str, preset: str):
    """The default of the align setting `key` under `method` with `preset`: the method's own for that
    preset, else the preset's align section's, else AlignConfig's."""
    own = METHOD_DEFAULTS.get(method, {}).get(preset, {}) if isinstance(method, str) else {}
    if key in own:
        return own[key]
    return PRESETS.get(preset, {}).get("align", {}).get(key, AlignConfig.__dataclass_fields__[key].default)


def help_for(key: str) -> str:
    """The help text of a config field, by dotted key (`train.lr`)."""
    section, _, name = key.rpartition(".")
    return next(describe(f) for f in dataclasses.fields(SECTIONS[section]) if f.name == name)


def parse_reward(spec: str) -> dict[str, float]:
    """`cider`, `cider:1,clipscore:0.5` → {term: weight}; a term without a weight weighs 1."""
    example = "e.g. cider or cider:1,hallucination:-1"
    terms: dict[str, float] = {}
    for part in str(spec).split(","):
        name, _, weight = part.strip().partition(":")
        name = name.strip()
        if name not in REWARD_TERMS:
            raise ConfigError(f"--reward: unknown term '{name}' in '{spec}'; the terms are {', '.join(REWARD_TERMS)} ({example}).")
        if name in terms:
            raise ConfigError(f"--reward: '{name}' appears twice in '{spec}' ({example}).")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ConfigError(f"--reward: the weight of '{name}' must be a number, got '{weight.strip()}' ({example}).") from None
        if not math.isfinite(value) or value == 0:
            raise ConfigError(f"--reward: the weight of '{name}' must be a finite non-zero number, got {weight.strip()} ({example}).")
        terms[name] = value
    return terms


def _section(f: dataclasses.Field):
    """The settings dataclass a field nests (RunConfig.model → ModelConfig), or None for a value."""
    factory = f.default_factory
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


def _merge(values: dict, new, cls, where: str) -> None:
    """Lay `new` (a YAML mapping or overrides) over `values` (a to_dict of `cls`), refusing keys
    `cls` does not have and a value where a section's mapping belongs."""
    if not isinstance(new, dict):
        raise ConfigError(f"{where.rstrip('.') or 'a config'} must be a mapping of settings (got {_kind(new)}).")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in new.items():
        if key not in fields:
            raise unknown_key(key, where, fields)
        nested = _section(fields[key])
        if nested is not None:
            _merge(values[key], value, nested, f"{where}{key}.")
        else:
            values[key] = value


def _kind(value) -> str:
    return {list: "a list", str: "text", type(None): "nothing"}.get(type(value), f"a {type(value).__name__}")


def _construct(values: dict) -> RunConfig:
    """The validated RunConfig of a merged mapping (each section's __post_init__ checks its fields)."""
    sections = {f.name: _section(f)(**values[f.name]) for f in dataclasses.fields(RunConfig) if _section(f)}
    return RunConfig(data=values["data"], **sections)


def build_config(preset: str | None = None, config_file: Path | None = None, overrides: dict | None = None,
                 base: RunConfig | None = None, flags: dict[str, str] | None = None) -> RunConfig:
    """Preset (or `base`: a run folder's resolved config, for the stages after that run), then YAML
    file, then command-line overrides (`{"train": {"lr": 0.1}}`), then validation. `flags` maps
    dotted keys to the command's flag names: a refused value the user gave as a flag is named by
    its flag (`--lr`), one from the file by its key (`train.lr`).

    The align settings whose default depends on the method (METHOD_DEFAULTS) take the chosen
    method's default unless set: by the file, by an override, or in `base`, where a value counts
    as set when it differs from the default of `base`'s own method (so a resumed run keeps every
    value it resolved, and a pretrained run passes on only what its own settings changed)."""
    loaded = _read_yaml(config_file) if config_file is not None else {}
    if base is not None:
        values, preset = to_dict(base), base.model.preset
        given = {key for key in _BY_METHOD if values["align"][key] != method_default(base.align.method, key, preset)}
    else:
        model = loaded.get("model")
        preset = preset or (model.get("preset") if isinstance(model, dict) else None) or "tiny"
        values, given = _preset_values(preset), set()
    _merge(values, loaded, RunConfig, "")
    _merge(values, overrides or {}, RunConfig, "")
    given |= set(loaded.get("align") or {}) | set((overrides or {}).get("align") or {})
    for key in _BY_METHOD - given:
        values["align"][key] = method_default(values["align"]["method"], key, preset)
    try:
        config = _construct(values)
        validate(config)
    except ConfigError as exc:
        raise _named_by_flags(exc, overrides or {}, flags or {}) from None
    return config


def _named_by_flags(exc: ConfigError, overrides: dict, flags: dict[str, str]) -> ConfigError:
    """The error with every config key in it spelled as its flag, when the refused setting came from one."""
    message = str(exc)
    key = message.split(" ", 1)[0]
    section, _, name = key.rpartition(".")
    from_flag = name in overrides.get(section, {}) if section else name in overrides
    if key not in flags or not from_flag:
        return exc
    return ConfigError(re.sub(r"\b(?:model|train|align)\.\w+", lambda m: flags.get(m.group(0), m.group(0)), message))


class _ConfigLoader(yaml.SafeLoader):
    """Settings files as YAML without anchors and aliases (settings never need them, and nested
    aliases let a few hundred bytes expand to gigabytes), and with `1e-3` read as the number it
    means (YAML 1.1 wants `1.0e-3`)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(f"line {event.start_mark.line + 1} uses the YAML alias *{event.anchor}")
        return super().compose_node(parent, index)


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


class _AliasRefused(yaml.YAMLError):
    pass


def _read_yaml(config_file: Path) -> dict:
    path = Path(config_file)
    if not path.is_file():
        raise MissingError(f"Config file {path} does not exist.")
    return _parse_yaml(read_text(path, "config file"), path)


def _parse_yaml(text: str, path: Path) -> dict:
    """A config file's text as a mapping of settings; anything else is one ConfigError naming `path`."""
    try:
        loaded = yaml.load(text, Loader=_ConfigLoader) or {}
    except _AliasRefused as exc:
        raise ConfigError(f"Config file {path}: {exc}; config files take no anchors or aliases (&name, *name): "
                          "write each value out.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    except RecursionError:
        raise ConfigError(f"Config file {path} nests too deeply to be a config file.") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of settings at the top level (got {_kind(loaded)}).")
    return loaded


def _preset_values(name) -> dict:
    """The defaults with the preset `name`'s settings laid over them, as a mapping."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    values = to_dict(RunConfig())
    values["model"]["preset"] = name
    _merge(values, copy.deepcopy(PRESETS[name]), RunConfig, "")
    return values


def validate(config: RunConfig) -> None:
    """The checks that span sections or need the architecture registry (each field's own checks ran
    when its section was built)."""
    problem = registry.config_problem(config.model)
    if problem is not None:
        raise ConfigError(problem + ".")


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
            raise ConfigError(f"{path} is damaged or was edited (it differs from the checksum written with it); "
                              "put settings in a --config file instead, or start afresh without that run folder.")
    values = to_dict(RunConfig())
    _merge(values, _parse_yaml(text, Path(path)), RunConfig, "")  # a damaged file: one line, as a --config file
    return _construct(values)
