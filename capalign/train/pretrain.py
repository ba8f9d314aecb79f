"""Stage 1: captioning loss + image–text InfoNCE (and seed 003's optional terms) on the prepared dataset."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from accelerate.utils import set_seed
from torch.utils.data import Subset

from capalign.config import RunConfig, TrainConfig, load_config, save_config, to_dict
from capalign.data.collate import CaptionCollator, CaptionPairs
from capalign.data.store import get_split, load_prepared
from capalign.data.streaming import TrainingStream, is_stream, open_stream
from capalign.devices import check_precision
from capalign.distributed import process_state
from capalign.errors import ConfigError
from capalign.losses import stage1_loss
from capalign.models.build import build_captioner
from capalign.models.io import foreign_model_config, load_captioner, save_captioner
from capalign.model_card import write_model_card
from capalign.reporting import log
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
    """(settings, data, tokenizer, processor, model) for a fresh (or resumed) pretraining run; with
    `init_from` (a run folder or a transformers captioner folder), that model's weights, tokenizer
    and processor (fine-tuning: the returned settings then record where the model came from)."""
    streamed = is_stream(config)  # shards or --streaming: read as they are, not prepared (capalign.data.streaming)
    data = open_stream(config) if streamed else load_prepared(config.data)
    train = get_split(data, "train")
    t = config.train
    if init_from is not None:
        config, tokenizer, processor, captioner = initial_model(config, init_from)
        return config, data, tokenizer, processor, captioner
    captions = train.captions() if streamed else itertools.chain.from_iterable(train["captions"])
    captioner, tokenizer, processor = build_captioner(config.model, captions, with_head=bool(t.contrastive_weight or t.cosine_weight))
    return config, data, tokenizer, processor, captioner


def initial_model(config: RunConfig, init_from: Path):
    """(settings, tokenizer, processor, captioner) loaded from `init_from`, with the config's frozen
    parts; a model without a contrastive head trains the captioning loss alone (its weights set to 0)."""
    captioner, tokenizer, processor = load_captioner(init_from)
    captioner.freeze(vision=config.model.freeze_vision,
                     decoder=config.model.freeze_decoder if captioner.decoder is not None else None)
    saved = Path(init_from) / CONFIG_NAME  # a capalign run records its model settings; a transformers folder does not
    model = load_config(saved).model if saved.is_file() else foreign_model_config(init_from, config.model)
    train = config.train
    if captioner.head is None and (train.contrastive_weight or train.cosine_weight):
        log.info(f"note: {init_from} has no contrastive head; fine-tuning with the captioning loss only.")
        train = dataclasses.replace(train, contrastive_weight=0.0, cosine_weight=0.0)
    model = dataclasses.replace(model, freeze_vision=config.model.freeze_vision, freeze_decoder=config.model.freeze_decoder)
    return dataclasses.replace(config, model=model, train=train), tokenizer, processor, captioner


def _pairs(split, name: str, captioner, processor, use_cache: bool, train=None):
    if isinstance(split, TrainingStream):
        return split
    if not use_cache:
        return CaptionPairs(split)
    store = cached_features(split, name, captioner.vision, processor, keep_hidden=captioner.architecture.keeps_encoder_tokens,
                            root=train.cache_dir if train else None,
                            dtype=CACHE_DTYPES[train.mixed_precision if train else "no"])
    if store.computed:
        log.info(f"Cached frozen-encoder features of {name} ({len(store)} images) in {store.folder}")
    return CachedCaptionPairs(split, store)


def pretrain(config: RunConfig, out: Path | None = None, resume: bool = False, dry_run: bool = False,
             overwrite: bool = False, init_from: Path | None = None) -> Path | None:
    """Train stage 1 and write a run folder; returns its path (None for a dry run, which writes nothing).
    `init_from`: start from that model's weights with a fresh schedule (fine-tuning). `config` is
    left as it is: the run's settings are a resolved copy."""
    if resume:
        check_resume(out, "pretrain")
    check_precision(config.train.mixed_precision, config.train.device)  # never record a precision not trained in
    set_seed(config.train.seed)  # model initialisation is part of what --seed fixes
    config, data, tokenizer, processor, captioner = build_run(config, init_from)
    collate, plain_collate = _collators(config, captioner, tokenizer, processor)
    loss_fn = pretrain_loss(config.train)
    if dry_run:
        pairs = list(itertools.islice(data["train"], config.train.batch_size)) if is_stream(config) \
            else CaptionPairs(data["train"])
        report_dry_run(captioner, pairs, collate, loss_fn, config.train.batch_size)
        return None
    run_dir = _claim_run_folder(config, out, resume, overwrite)
    use_cache = config.train.feature_cache and captioner.frozen["vision"] and not config.train.augment \
        and captioner.architecture.caches_features and not is_stream(config)
    train_pairs = _pairs(data["train"], "train", captioner, processor, use_cache, config.train)
    validate = _validation(config, data, captioner, tokenizer, processor, use_cache, plain_collate, loss_fn)
    engine = Engine(
        captioner, loss_fn, train_pairs, collate, config.train, run_dir, validate=validate,
        save_best=lambda module, where: save_captioner(where, module, tokenizer, processor),
        description="pretrain", tracker_config=to_dict(config),
    )
    if resume and engine.resume():
        log.info(f"Resumed from step {engine.state.step}.")
    engine.fit()
    if engine.accelerator.is_main_process:
        _save_trained(run_dir, engine, config, tokenizer, processor, init_from)
    engine.finish()
    return finish_run(run_dir) if process_state().is_main_process else run_dir  # an --overwrite replaces the old run now


def _collators(config: RunConfig, captioner, tokenizer, processor) -> tuple[CaptionCollator, CaptionCollator]:
    """The training batches' collator (with the augmentation the config asks for) and a plain one for validation."""
    text_inputs = None
    if captioner.text_tower is not None:
        text_inputs = lambda texts: captioner.tokenize_texts(tokenizer, texts)  # noqa: E731
    collate = CaptionCollator(tokenizer, processor, config.model.max_caption_tokens, text_inputs=text_inputs,
                              augment=config.train.augment)
    plain_collate = CaptionCollator(tokenizer, processor, config.model.max_caption_tokens, text_inputs=text_inputs)
    return collate, plain_collate


def _claim_run_folder(config: RunConfig, out: Path | None, resume: bool, overwrite: bool) -> Path:
    """The run folder, with the resolved settings and a note that pretraining trains into it."""
    run_dir = new_run_dir("pretrain", out, resume=resume, overwrite=overwrite)
    if process_state().is_main_process:
        save_config(config, run_dir / CONFIG_NAME)
        record_stage(run_dir, "pretrain")
    return run_dir


def _validation(config: RunConfig, data, captioner, tokenizer, processor, use_cache: bool, collate, loss_fn):
    """What validation measures: the loss on a fixed subset of pairs, plus the selection metric
    (`train.select`); None without a validation split."""
    if "validation" not in data or not len(data["validation"]):
        return None
    val_pairs = _pairs(data["validation"], "validation", captioner, processor, use_cache, config.train)
    checks = [validation_loss(val_pairs, collate, loss_fn, config.train.batch_size)]
    spec = config.train.select or ("cider" if captioner.architecture.captions else "top1")
    retrieval = spec.lower() != "none" and {n for _, n in parse_select(spec)} <= RETRIEVAL
    if spec.lower() != "none" and retrieval and captioner.head is None:
        raise ConfigError(f"--select {spec} needs a contrastive head; set a contrastive weight above 0.")
    if spec.lower() != "none" and not retrieval and not captioner.architecture.captions:
        raise ConfigError(f"--select {spec}: a contrastive-only model writes no captions; use top1, top10 or top100.")
    if spec.lower() != "none":
        checks.append(validation_metric(data["validation"], tokenizer, processor, spec, config.train.val_images,
                                        config.model.max_caption_tokens))

    def validate(module) -> dict[str, float]:
        results: dict[str, float] = {}
        for check in checks:
            results.update(check(module))
        return results

    return validate


def _save_trained(run_dir: Path, engine: Engine, config: RunConfig, tokenizer, processor, init_from: Path | None) -> None:
    """The trained model, run.json (what the run did) and the model card."""
    save_captioner(run_dir, engine.unwrapped(), tokenizer, processor)
    mark_finished(run_dir, "pretrain", data=str(config.data), steps=engine.state.step,
                  skipped_nonfinite=engine.state.skipped_nonfinite, stopped_early=engine.state.stopped_early,
                  best_val_loss=engine.state.best_val_loss, best_metric=engine.state.best_metric,
                  **({"init_from": str(init_from)} if init_from is not None else {}))
    clear_stage(run_dir)
    write_model_card(run_dir)
