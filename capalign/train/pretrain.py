"""Stage 1: captioning loss + image–text InfoNCE on the prepared dataset."""

from __future__ import annotations

import itertools
import resource
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Subset

from capalign import ui
from capalign.config import RunConfig, save_config
from capalign.data.collate import CaptionCollator, CaptionPairs
from capalign.data.store import get_split, load_prepared
from capalign.models.captioner import Captioner, build_image_processor, build_tiny_model, save_captioner
from capalign.models.tokenizer import train_word_tokenizer
from capalign.train.engine import Engine, EngineSettings
from capalign.workspace import CONFIG_NAME, mark_finished, new_run_dir

VALIDATION_PAIRS = 512


def engine_settings(config: RunConfig) -> EngineSettings:
    t = config.train
    return EngineSettings(
        lr=t.lr, batch_size=t.batch_size, epochs=t.epochs, max_steps=t.max_steps, weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio, grad_clip=t.grad_clip, grad_accum=t.grad_accum,
        mixed_precision=t.mixed_precision, seed=t.seed, log_every=t.log_every,
        checkpoint_every=t.checkpoint_every, eval_every=t.eval_every,
    )


def pretrain_loss(contrastive_weight: float):
    """Captioning cross-entropy plus `contrastive_weight` x InfoNCE; logs both parts."""

    def loss_fn(module, batch):
        parts = module(**batch)
        loss = parts["caption_loss"]
        if "contrastive_loss" in parts:
            loss = loss + contrastive_weight * parts["contrastive_loss"]
        return loss, parts

    return loss_fn


def validation_loss(dataset, collate, loss_fn, batch_size: int):
    """Mean loss (and parts) over a fixed subset of validation pairs."""
    pairs = CaptionPairs(dataset)
    subset = Subset(pairs, range(min(VALIDATION_PAIRS, len(pairs))))

    def run(module) -> dict[str, float]:
        device = next(module.parameters()).device
        totals: dict[str, float] = {}
        batches = 0
        for batch in DataLoader(subset, batch_size=batch_size, collate_fn=collate):
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, parts = loss_fn(module, batch)
            for key, value in {"loss": loss, **parts}.items():
                totals[f"val_{key}"] = totals.get(f"val_{key}", 0.0) + float(value)
            batches += 1
        return {k: v / batches for k, v in totals.items()}

    return run


def build_run(config: RunConfig, run_dir: Path):
    """Data, tokenizer, processor and model for a fresh (or resumed) pretraining run."""
    data = load_prepared(config.data)
    train = get_split(data, "train")
    tokenizer = train_word_tokenizer(itertools.chain.from_iterable(train["captions"]))
    processor = build_image_processor(config.model)
    model = build_tiny_model(config.model, tokenizer)
    captioner = Captioner.with_new_head(model, config.model.projection_dim)
    return data, tokenizer, processor, captioner


def pretrain(config: RunConfig, out: Path | None = None, resume: bool = False, dry_run: bool = False) -> Path:
    """Train stage 1 and write a run folder; returns its path."""
    run_dir = new_run_dir("pretrain", out)
    set_seed(config.train.seed)  # model initialisation is part of what --seed fixes
    data, tokenizer, processor, captioner = build_run(config, run_dir)
    collate = CaptionCollator(tokenizer, processor, config.model.max_caption_tokens)
    loss_fn = pretrain_loss(config.train.contrastive_weight)
    if dry_run:
        report_dry_run(captioner, CaptionPairs(data["train"]), collate, loss_fn, config.train.batch_size)
        return run_dir
    save_config(config, run_dir / CONFIG_NAME)

    def save(module, where: Path) -> None:
        save_captioner(where, module, tokenizer, processor)

    validate = None
    if "validation" in data and len(data["validation"]):
        validate = validation_loss(data["validation"], collate, loss_fn, config.train.batch_size)
    engine = Engine(
        captioner, loss_fn, CaptionPairs(data["train"]), collate, engine_settings(config), run_dir,
        validate=validate, save_best=save, description="pretrain",
    )
    if resume and engine.resume():
        ui.console.print(f"Resumed from step {engine.state.step}.")
    engine.fit()
    if engine.accelerator.is_main_process:
        save(engine.unwrapped(), run_dir)
        mark_finished(run_dir, "pretrain", data=str(config.data), steps=engine.state.step,
                      skipped_nonfinite=engine.state.skipped_nonfinite)
    engine.finish()
    return run_dir


def report_dry_run(captioner, pairs, collate, loss_fn, batch_size: int) -> None:
    """Build one batch and run one forward pass; print parameter counts, loss and peak memory."""
    batch = collate([pairs[i] for i in range(min(batch_size, len(pairs)))])
    with torch.no_grad():
        loss, _ = loss_fn(captioner, batch)
    total = sum(p.numel() for p in captioner.parameters())
    trainable = sum(p.numel() for p in captioner.parameters() if p.requires_grad)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ui.print_table(
        "dry run",
        ["what", "value"],
        [["training pairs", len(pairs)], ["parameters", f"{total:,}"], ["trainable", f"{trainable:,}"],
         ["batch", str(tuple(batch["pixel_values"].shape))], ["first loss", float(loss)], ["peak RSS (MiB)", f"{peak_mib:.0f}"]],
    )
