"""Stage 1: captioning loss + image–text InfoNCE (and seed 003's optional terms) on the prepared dataset."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from accelerate.utils import set_seed
from torch.utils.data import Subset

from capalign import ui
from capalign.config import RunConfig, TrainConfig, load_config, save_config, to_dict
from capalign.data.collate import CaptionCollator, CaptionPairs
from capalign.data.store import get_split, load_prepared
from capalign.data.streaming import TrainingStream, is_stream, open_stream
from capalign.distributed import process_state
from capalign.errors import UserError
from capalign.losses import stage1_loss
from capalign.models.build import build_captioner
from capalign.models.io import foreign_model_config, load_captioner, save_captioner
from capalign.model_card import write_model_card
from capalign.runs import CONFIG_NAME, finish_run, mark_finished, new_run_dir
from capalign.train.engine import Engine, average_losses
from capalign.train.feature_cache import CACHE_DTYPES, CachedCaptionPairs, cached_features
from capalign.train.reports import report_dry_run
from capalign.train.selection import RETRIEVAL, parse_select, validation_metric
from capalign.train.stages import check_resume, clear_stage, record_stage

VALIDATION_PAIRS = 512


def pretrain_loss(train: TrainConfig):
    """The stage-1 objective (capalign.losses.stage1_loss) with this run's weights; logs every part."""

    def loss_fn(module, batch):
        return stage1_loss(module(**batch), batch["labels"], train, spread=module.training)

    return loss_fn


def validation_loss(pairs, collate, loss_fn, batch_size: int):
    """Mean loss (and parts) over a fixed subset of validation pairs."""
    subset = Subset(pairs, range(min(VALIDATION_PAIRS, len(pairs))))

    def run(module) -> dict[str, float]:
        return average_losses(module, subset, collate, loss_fn, batch_size, "val_")

    return run


def build_run(config: RunConfig, init_from: Path | None = None):
    """Data, tokenizer, processor and model for a fresh (or resumed) pretraining run; with `init_from`
    (a run folder or a transformers captioner folder), that model's weights, tokenizer and processor
    (fine-tuning: config.model then records where they came from)."""
    streamed = is_stream(config)  # shards or --streaming: read as they are, not prepared (capalign.data.streaming)
    data = open_stream(config) if streamed else load_prepared(config.data)
    train = get_split(data, "train")
    t = config.train
    if init_from is not None:
        return (data, *initial_model(config, init_from))
    captions = train.captions() if streamed else itertools.chain.from_iterable(train["captions"])
    captioner, tokenizer, processor = build_captioner(
        config.model, captions, with_head=bool(t.contrastive_weight or t.cosine_weight))
    return data, tokenizer, processor, captioner


def initial_model(config: RunConfig, init_from: Path):
    """(tokenizer, processor, captioner) loaded from `init_from`, with the config's frozen parts; a
    model without a contrastive head trains the captioning loss alone (its weights set to 0)."""
    captioner, tokenizer, processor = load_captioner(init_from)
    captioner.freeze(vision=config.model.freeze_vision,
                     decoder=config.model.freeze_decoder if captioner.decoder is not None else None)
    saved = Path(init_from) / CONFIG_NAME  # a capalign run records its model settings; a transformers folder does not
    model = load_config(saved).model if saved.is_file() else foreign_model_config(init_from, config.model)
    config.model = dataclasses.replace(model, freeze_vision=config.model.freeze_vision,
                                       freeze_decoder=config.model.freeze_decoder)
    if captioner.head is None and (config.train.contrastive_weight or config.train.cosine_weight):
        ui.console.print(f"note: {init_from} has no contrastive head; fine-tuning with the captioning loss only.")
        config.train.contrastive_weight = config.train.cosine_weight = 0.0
    return tokenizer, processor, captioner


def _pairs(split, name: str, captioner, processor, use_cache: bool, train=None):
    if isinstance(split, TrainingStream):
        return split
    if not use_cache:
        return CaptionPairs(split)
    store = cached_features(split, name, captioner.vision, processor, keep_hidden=captioner.architecture.keeps_encoder_tokens,
                            root=train.cache_dir if train else None,
                            dtype=CACHE_DTYPES[train.mixed_precision if train else "no"])
    if store.computed:
        ui.console.print(f"Cached frozen-encoder features of {name} ({len(store)} images) in {store.folder}")
    return CachedCaptionPairs(split, store)


def pretrain(config: RunConfig, out: Path | None = None, resume: bool = False, dry_run: bool = False,
             overwrite: bool = False, init_from: Path | None = None) -> Path | None:
    """Train stage 1 and write a run folder; returns its path (None for a dry run, which writes nothing).
    `init_from`: start from that model's weights with a fresh schedule (fine-tuning)."""
    if resume:
        check_resume(out, "pretrain")
    set_seed(config.train.seed)  # model initialisation is part of what --seed fixes
    data, tokenizer, processor, captioner = build_run(config, init_from)
    text_inputs = None
    if captioner.text_tower is not None:
        text_inputs = lambda texts: captioner.tokenize_texts(tokenizer, texts)  # noqa: E731
    collate = CaptionCollator(tokenizer, processor, config.model.max_caption_tokens, text_inputs=text_inputs,
                              augment=config.train.augment)
    plain_collate = CaptionCollator(tokenizer, processor, config.model.max_caption_tokens, text_inputs=text_inputs)
    loss_fn = pretrain_loss(config.train)
    if dry_run:
        pairs = list(itertools.islice(data["train"], config.train.batch_size)) if is_stream(config) \
            else CaptionPairs(data["train"])
        report_dry_run(captioner, pairs, collate, loss_fn, config.train.batch_size)
        return None
    run_dir = new_run_dir("pretrain", out, resume=resume, overwrite=overwrite)
    if process_state().is_main_process:
        save_config(config, run_dir / CONFIG_NAME)
        record_stage(run_dir, "pretrain")

    def save(module, where: Path) -> None:
        save_captioner(where, module, tokenizer, processor)

    use_cache = config.train.feature_cache and captioner.frozen["vision"] and not config.train.augment \
        and captioner.architecture.caches_features and not is_stream(config)
    train_pairs = _pairs(data["train"], "train", captioner, processor, use_cache, config.train)
    validate = None
    if "validation" in data and len(data["validation"]):
        val_pairs = _pairs(data["validation"], "validation", captioner, processor, use_cache, config.train)
        checks = [validation_loss(val_pairs, plain_collate, loss_fn, config.train.batch_size)]
        spec = config.train.select or ("cider" if captioner.architecture.captions else "top1")
        retrieval = spec.lower() != "none" and {n for _, n in parse_select(spec)} <= RETRIEVAL
        if spec.lower() != "none" and retrieval and captioner.head is None:
            raise UserError(f"--select {spec} needs a contrastive head; set a contrastive weight above 0.")
        if spec.lower() != "none" and not retrieval and not captioner.architecture.captions:
            raise UserError(f"--select {spec}: a contrastive-only model writes no captions; use top1, top10 or top100.")
        if spec.lower() != "none":
            checks.append(validation_metric(data["validation"], tokenizer, processor, spec, config.train.val_images,
                                            config.model.max_caption_tokens))

        def validate(module) -> dict[str, float]:
            results: dict[str, float] = {}
            for check in checks:
                results.update(check(module))
            return results

    engine = Engine(
        captioner, loss_fn, train_pairs, collate, config.train, run_dir,
        validate=validate, save_best=save, description="pretrain", tracker_config=to_dict(config),
    )
    if resume and engine.resume():
        ui.console.print(f"Resumed from step {engine.state.step}.")
    engine.fit()
    if engine.accelerator.is_main_process:
        save(engine.unwrapped(), run_dir)
        mark_finished(run_dir, "pretrain", data=str(config.data), steps=engine.state.step,
                      skipped_nonfinite=engine.state.skipped_nonfinite, stopped_early=engine.state.stopped_early,
                      best_val_loss=engine.state.best_val_loss, best_metric=engine.state.best_metric,
                      **({"init_from": str(init_from)} if init_from is not None else {}))
        clear_stage(run_dir)
        write_model_card(run_dir)
    engine.finish()
    return finish_run(run_dir) if process_state().is_main_process else run_dir  # an --overwrite replaces the old run now
