"""The steps both stage-2 methods (DPO in capalign.train.align, SCST in capalign.train.scst) take, in
run order: resolve the run's settings from the pretrained run's, load that run once (the policy, and
its frozen copy: the reference, pair scorer, reward model and report baseline), prepare the policy
(frozen parts, LoRA, dropout), record the run's start in its folder, and at the end save the aligned
model, its record and its report; and the auxiliary InfoNCE term both losses add."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from capalign.config import AlignConfig, RunConfig, load_config, save_config
from capalign.devices import resolve_device
from capalign.distributed import process_state
from capalign.errors import ConfigError
from capalign.losses import info_nce
from capalign.model_card import write_model_card
from capalign.models.io import foreign_model_config, load_captioner, save_captioner
from capalign.runs import CONFIG_NAME, mark_finished
from capalign.train.policy import add_lora, disable_dropout, merge_lora
from capalign.train.reports import alignment_report
from capalign.train.stages import record_stage

REPORT_IMAGES = 1000


@dataclass
class Start:
    """What an alignment starts from: the policy it trains, the pretrained model frozen (an
    independent copy of the same weights), their tokenizer and processor, and the weight of the
    auxiliary InfoNCE term that applies to this policy."""

    policy: torch.nn.Module
    pretrained: torch.nn.Module
    tokenizer: object
    processor: object
    contrastive_weight: float


def resolve_config(model_dir: Path, config: RunConfig, data: str | None) -> RunConfig:
    """`config` with the pretrained run's model settings and data (`data` overrides the data); a
    transformers captioner capalign did not train records neither, so `data` must be given."""
    saved = Path(model_dir) / CONFIG_NAME
    if saved.is_file():
        pretrained = load_config(saved)
        return dataclasses.replace(config, model=pretrained.model, data=data or pretrained.data)
    model = foreign_model_config(model_dir, config.model)
    if data is None:
        raise ConfigError(f"align --model {model_dir}: it is not a capalign run, so no dataset is recorded with it; "
                          "pass --data DIR_OR_NAME.")
    return dataclasses.replace(config, model=model, data=data)


def load_start(model_dir: Path, config: RunConfig) -> Start:
    """Load the pretrained run once onto the training device: the policy, prepared for training as
    `config.align` says, and its frozen copy taken before that."""
    device = resolve_device(config.train.device)  # pair building, reference log-probs and report run here too
    policy, tokenizer, processor = load_captioner(model_dir, device)
    pretrained = frozen_copy(policy)
    weight = contrastive_weight(policy, config.align)
    prepare_policy(policy, config.align, weight)
    return Start(policy, pretrained, tokenizer, processor, weight)


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """An independent copy of `module`'s parameters and buffers, in eval mode, with no gradients."""
    return copy.deepcopy(module).eval().requires_grad_(False)


def contrastive_weight(policy, a: AlignConfig) -> float:
    """The InfoNCE term's weight: none without a contrastive head, and none under LoRA (it wraps the
    decoder whose text-only pass feeds the head, which is kept frozen then)."""
    return a.contrastive_weight if policy.head is not None and not a.lora_rank else 0.0


def prepare_policy(policy, a: AlignConfig, weight: float) -> None:
    """Freeze what stays fixed (the head when it has no loss term), add LoRA adapters, drop dropout."""
    if policy.head is not None and not weight:
        policy.head.requires_grad_(False)
    if a.freeze_vision is not None:
        policy.freeze(vision=a.freeze_vision)
    if a.lora_rank:
        add_lora(policy, a.lora_rank)
    if a.disable_dropout:
        disable_dropout(policy)


def record_start(run_dir: Path, config: RunConfig) -> None:
    """Write the run's resolved settings and note that an alignment trains into `run_dir`."""
    save_config(config, run_dir / CONFIG_NAME)
    if process_state().is_main_process:
        record_stage(run_dir, "align")


def text_inputs(start: Start):
    """The tokeniser of the contrastive term's text side (None when the term is off)."""
    if not start.contrastive_weight:
        return None
    return lambda texts: start.policy.tokenize_texts(start.tokenizer, texts)  # noqa: E731


def contrastive_term(module, pooled: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """InfoNCE between the images' pooled features and their captions under the module's contrastive
    head: the auxiliary term that keeps the head matched while the encoder and decoder move."""
    text = module.text_features(input_ids, attention_mask)
    return info_nce(module.head.embed_image(pooled), module.head.embed_text(text), module.head.logit_scale)


def save_aligned(run_dir: Path, policy, start: Start, **info) -> None:
    """Fold LoRA adapters in, write the aligned model and run.json (with `info`)."""
    merge_lora(policy)
    save_captioner(run_dir, policy, start.tokenizer, start.processor)
    mark_finished(run_dir, "align", **info)


def report(run_dir: Path, policy, start: Start, dataset, held_out_scores: dict | None = None) -> None:
    """The alignment report on up to REPORT_IMAGES test (or validation) images, then the model card."""
    split = next((dataset[name] for name in ("test", "validation") if name in dataset and len(dataset[name])), None)
    if split is not None:
        alignment_report(policy, start.pretrained, start.tokenizer, start.processor,
                         split.select(range(min(REPORT_IMAGES, len(split)))), run_dir, held_out_scores)
    write_model_card(run_dir)
