"""Stage 2: DPO-family preference optimisation of caption generation against a frozen reference
(`--method dpo`, the default; `--method scst` is capalign.train.scst, dispatched from `align`).

The reference model's log-probabilities of every chosen and rejected caption are computed once,
before training, and stored with the pairs: the reference is never run inside the training loop.

Alignment keeps what the pretrained model could do: the contrastive head stays trainable under an
auxiliary InfoNCE term on (image, chosen caption) (`align.contrastive_weight`), so image–text
retrieval and self-scored CLIPScore survive the encoder and decoder moving; and the pretrained model,
frozen, is the pair ranker's scorer and the DPO reference in every round (`align.pair_scorer`,
`align.reference`), so later rounds are not judged by a drifting model. run.json records both.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from capalign import reporting
from capalign.config import AlignConfig, RunConfig
from capalign.data.store import load_prepared
from capalign.data.streaming import TrainingStream, is_stream, open_stream
from capalign.devices import check_precision
from capalign.distributed import process_state
from capalign.errors import ConfigError, InputError
from capalign.inference.generate import DecodeOptions
from capalign.losses import preference_loss, sequence_logps, token_cross_entropy
from capalign.pairs.dataset import PairBatchMaker, PairSet, build_pair_sets
from capalign.reporting import log
from capalign.runs import finish_run, new_run_dir
from capalign.train import rounds, stage2
from capalign.train.engine import Engine, average_losses
from capalign.train.scst import align_scst, check_stream_rewards
from capalign.train.stages import check_resume, clear_stage


def policy_logps(module, batch, average: bool):
    """Log-probs of chosen and rejected captions (image encoded once; text-only without images), and
    the chosen captions' logits with their labels padded to the same width (for the supervised term)."""
    return _policy_outputs(module, batch, average)[:4]


def _policy_outputs(module, batch, average: bool):
    """`policy_logps` plus the images' pooled features (None for image-free pairs)."""
    n = batch["chosen_labels"].size(0)
    width = max(batch["chosen_labels"].size(1), batch["rejected_labels"].size(1))
    labels = torch.cat([_pad_to(batch["chosen_labels"], width), _pad_to(batch["rejected_labels"], width)])
    pooled = None
    if "pixel_values" in batch:
        encoded = module.encode_images(batch["pixel_values"])
        pooled = encoded.pooler_output
        logits = module.caption_logits(encoded, labels)  # each image scores its chosen and its rejected caption
    else:
        logits = module.prior_logits(labels)
    logps = sequence_logps(logits, labels, average=average)
    return logps[:n], logps[n:], logits[:n], labels[:n], pooled


def _pad_to(labels: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(labels, (0, width - labels.size(1)), value=-100)


@torch.no_grad()
def attach_reference_logps(reference, pair_set: PairSet, collate, batch_size: int, average: bool) -> None:
    """Run the frozen reference once over all pairs (a progress bar counts them) and store its
    log-probs with them (one [pairs, 2] array)."""
    reference.eval()
    device = next(reference.parameters()).device
    values = np.empty((len(pair_set), 2))
    done = 0
    with reporting.progress("reference log-probs", len(pair_set)) as advance:
        for batch in DataLoader(pair_set, batch_size=batch_size, collate_fn=collate):
            batch = {k: v.to(device) for k, v in batch.items()}
            chosen, rejected, _, _ = policy_logps(reference, batch, average)
            values[done : done + len(chosen)] = torch.stack([chosen, rejected], 1).double().cpu().numpy()
            done += len(chosen)
            advance(completed=done)
    pair_set.reference = values


def dpo_loss_fn(beta: float, loss_type: str, label_smoothing: float, sft_weight: float, contrastive_weight: float = 0.0):
    """The stage-2 objective with TRL-named logs; with `contrastive_weight`, plus that much InfoNCE
    between the images and their chosen captions under the module's (trainable) contrastive head."""
    average = loss_type == "ipo"

    def loss_fn(module, batch):
        chosen, rejected, chosen_logits, chosen_labels, pooled = _policy_outputs(module, batch, average)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta, loss_type, label_smoothing
        )
        loss = losses.mean()
        if sft_weight:
            loss = loss + sft_weight * token_cross_entropy(chosen_logits, chosen_labels)
        logs = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": chosen.detach().mean(),
            "logps/rejected": rejected.detach().mean(),
        }
        if contrastive_weight and pooled is not None and "chosen_text_input_ids" in batch:
            logs["contrastive_loss"] = stage2.contrastive_term(module, pooled, batch["chosen_text_input_ids"],
                                                               batch["chosen_text_attention_mask"])
            loss = loss + contrastive_weight * logs["contrastive_loss"]
        return loss, logs

    return loss_fn


def held_out_metrics(pair_set: PairSet, collate, loss_fn, batch_size: int):
    """Loss and reward metrics on held-out pairs, as TRL names them (eval_ prefix)."""

    def run(module) -> dict[str, float]:
        results = average_losses(module, pair_set, collate, loss_fn, batch_size, "eval_")
        if results:  # no held-out pairs (every validation candidate tied): nothing to report or select on
            results["val_loss"] = results["eval_loss"]
        return results

    return run


def align(model_dir: Path, config: RunConfig, data: str | None = None, out: Path | None = None, resume: bool = False,
          overwrite: bool = False) -> Path:
    """Align a pretrained run with preference pairs (or, with `align.method` scst, by self-critical
    sequence training: capalign.train.scst); writes a new run folder and returns it. `config` is
    left as it is: the run's settings are a resolved copy.

    With `rounds` > 1 (iterative DPO), each round makes fresh pairs with the current policy; its frozen
    reference is the pretrained model (`align.reference: pretrained`) or the previous round's policy.
    `resume` skips the rounds capalign.train.rounds records as finished (restoring the policy they
    ended with), rebuilds the next round's pairs (seeded) and continues it from its newest checkpoint.
    On a streamed --data, round N builds its pairs from the stream's N-th window of
    `align.stream_window` images (capalign.data.streaming.TrainingStream.window), so a resumed round
    reads the window it was interrupted in."""
    if resume:
        check_resume(out, "align")
    config = stage2.resolve_config(model_dir, config, data)
    check_precision(config.train.mixed_precision, config.train.device)  # never record a precision not trained in
    dataset = _open_data(config)
    start = stage2.load_start(model_dir, config)
    if config.align.method == "scst":
        return align_scst(model_dir, config, dataset, start, out, resume, overwrite)
    return align_dpo(model_dir, config, dataset, start, out, resume, overwrite)


def _open_data(config: RunConfig):
    """The prepared dataset, or for a streamed --data (shards, --streaming) the stream, yielding each
    image with its references (capalign.data.streaming.open_stream): SCST trains on it, DPO reads it a
    window a round; what a stream cannot feed is refused first."""
    if not is_stream(config):
        return load_prepared(config.data)
    if config.align.method == "scst":
        check_stream_rewards(config.align.reward, config.align.reward_clip)
        return open_stream(config, config.align_engine(), references=True)
    if config.align.pairs != "auto":  # corrupted needs ground-truth objects; a pairs file names prepared images
        raise ConfigError(f"--pairs {config.align.pairs}: DPO on a streamed source builds each round's pairs from "
                          "its window of the stream; use --pairs auto, or fetch the data first.")
    return open_stream(config, config.align_engine(), references=True, windowed=True)


def round_data(dataset, round_index: int, window: int):
    """The data round `round_index` builds its pairs from: the prepared dataset, or that round's
    window of a stream (with the validation split held in memory, when there is one)."""
    stream = dataset["train"]
    if not isinstance(stream, TrainingStream):
        return dataset
    log.info(f"Round {round_index + 1}: images {round_index * window + 1}-{(round_index + 1) * window} of the stream.")
    return {**dataset, "train": stream.window(round_index, window)}


def align_dpo(model_dir: Path, config: RunConfig, dataset, start: stage2.Start, out: Path | None, resume: bool,
              overwrite: bool) -> Path:
    """Train `start.policy` (prepared by capalign.train.stage2) with DPO, round by round; writes the run folder."""
    a = config.align
    scorer = start.pretrained if a.pair_scorer == "pretrained" else None  # None: the policy's own head
    run_dir = new_run_dir("align", out, resume=resume, overwrite=overwrite)
    main = process_state().is_main_process
    progress = _progress(run_dir, resume, a.rounds, main)
    stage2.record_start(run_dir, config)
    collate = PairBatchMaker(start.tokenizer, start.processor, config.model.max_caption_tokens, stage2.text_inputs(start))
    loss_fn = dpo_loss_fn(a.beta, a.loss, a.label_smoothing, a.sft_weight, start.contrastive_weight)
    policy, reference = _restore_rounds(run_dir, start, progress, a)
    steps, first_held_out = progress.steps, None  # round 1's held-out pairs, scored against the pretrained reference
    for round_index in range(progress.finished, a.rounds):
        seed = config.train.seed + 1000 * round_index
        train_pairs, held_out = round_pairs(policy, reference, scorer, start.tokenizer, start.processor,
                                            round_data(dataset, round_index, a.stream_window), config, collate,
                                            round_index, seed)
        engine = _train_round(policy, train_pairs, held_out, collate, loss_fn, config, run_dir, round_index, seed, steps,
                              resume and round_index == progress.finished)
        first_held_out = held_out if round_index == 0 else first_held_out
        steps += engine.state.step
        policy = engine.unwrapped()
        last = round_index + 1 == a.rounds
        if not last and a.reference == "previous":
            reference = stage2.frozen_copy(policy)
        _end_round(run_dir, engine, policy, round_index + 1, steps, record=main and not last)
    if not main:
        return run_dir
    _save(run_dir, model_dir, config, start, policy, steps, scorer)
    if progress.finished:  # resumed after round 1: its held-out pairs again (seeded, from the pretrained model)
        first_held_out = round_pairs(start.pretrained, start.pretrained, scorer, start.tokenizer, start.processor,
                                     round_data(dataset, 0, a.stream_window), config, collate, 0, config.train.seed)[1]
    stage2.report(run_dir, policy, start, dataset, _held_out_scores(policy, first_held_out, collate, loss_fn, a.batch_size))
    return finish_run(run_dir)  # an --overwrite replaces the old run now


def _progress(run_dir: Path, resume: bool, total: int, main: bool) -> rounds.RoundProgress:
    """The rounds an interrupted run finished (with `resume`); a fresh start forgets any recorded."""
    if not resume:
        if main:
            rounds.clear(run_dir)
        return rounds.RoundProgress()
    progress = rounds.load_progress(run_dir)
    if progress.finished >= total:
        raise ConfigError(f"{run_dir} finished {progress.finished} rounds already; --rounds is {total}.")
    return progress


def _restore_rounds(run_dir: Path, start: stage2.Start, progress: rounds.RoundProgress, a: AlignConfig) -> tuple:
    """The policy and reference the next round starts with: the loaded ones, or after resuming, the
    policy the last finished round ended with (and, with `reference: previous`, its frozen copy)."""
    policy, reference = start.policy, start.pretrained
    if progress.policy is not None:
        rounds.restore_policy(run_dir, policy, progress)
        log.info(f"Resuming after round {progress.finished}/{a.rounds} (step {progress.steps}).")
        if a.reference == "previous":
            reference = stage2.frozen_copy(policy)
    return policy, reference


def _end_round(run_dir: Path, engine: Engine, policy, finished: int, steps: int, record: bool) -> None:
    """Close a round: its policy saved (with `record`: every round but the last, on the main process),
    then its checkpoints dropped, and only then the round recorded as finished."""
    saved = rounds.save_policy(run_dir, policy, finished) if record else None
    engine.finish()
    if saved is not None:
        rounds.record(run_dir, rounds.RoundProgress(finished, steps, saved))


def _save(run_dir: Path, model_dir: Path, config: RunConfig, start: stage2.Start, policy, steps: int, scorer) -> None:
    """The aligned model and run.json; the round records and the stage note are dropped then."""
    a = config.align
    stage2.save_aligned(run_dir, policy, start, reference=str(model_dir), data=str(config.data), steps=steps,
                        rounds=a.rounds, seed=config.train.seed, reference_each_round=a.reference,
                        pair_scorer=_scorer_used(start, scorer, model_dir), contrastive_weight=start.contrastive_weight,
                        frozen=dict(policy.frozen))
    rounds.clear(run_dir)
    clear_stage(run_dir)


def _scorer_used(start: stage2.Start, scorer, model_dir: Path) -> str:
    """What ranked the pairs, for run.json."""
    if start.pretrained.head is None:
        return "none (the run has no contrastive head)"
    return f"pretrained run {model_dir} (frozen)" if scorer is not None else "the policy's own head, each round"


def _held_out_scores(policy, held_out: PairSet | None, collate, loss_fn, batch_size: int) -> dict | None:
    """The aligned policy's loss and rewards on round 1's held-out pairs (None without any)."""
    if held_out is None:
        return None
    with torch.no_grad():
        return held_out_metrics(held_out, collate, loss_fn, batch_size)(policy.eval())


def round_pairs(policy, reference, scorer, tokenizer, processor, dataset, config: RunConfig, collate,
                round_index: int, seed: int) -> tuple[PairSet, PairSet | None]:
    """A round's training and held-out pairs from the current policy (ranked with `scorer`'s head, or
    the policy's when None), with the reference's log-probabilities attached (the only time it runs)."""
    a = config.align
    log.info(f"Round {round_index + 1}/{a.rounds}: making preference pairs and reference log-probs")
    sampling = DecodeOptions(temperature=a.candidate_temperature, top_k=a.candidate_top_k, top_p=a.candidate_top_p)
    train_pairs, held_out = build_pair_sets(dataset, policy, tokenizer, processor, a.pairs, seed, scorer, sampling)
    if not len(train_pairs):
        raise InputError(f"Round {round_index + 1}: no training pair could be made (every image's candidates tied); "
                         "pass more images (a larger --stream-window on a stream) or other --pairs.")
    for pair_set in filter(None, (train_pairs, held_out)):
        attach_reference_logps(reference, pair_set, collate, a.batch_size, average=a.loss == "ipo")
    sources = Counter(p.source for p in train_pairs.pairs)
    log.info(f"Round {round_index + 1}: {len(train_pairs)} training pairs ("
                     + ", ".join(f"{n} {k}" for k, n in sorted(sources.items())) + ").")
    return train_pairs, held_out


def _train_round(policy, train_pairs: PairSet, held_out: PairSet | None, collate, loss_fn, config: RunConfig,
                 run_dir: Path, round_index: int, seed: int, steps_before: int, resume: bool) -> Engine:
    """Train the policy on one round's pairs; logged steps continue from earlier rounds."""
    a = config.align
    engine = Engine(
        policy, loss_fn, train_pairs, collate, config.align_engine(seed=seed), run_dir,
        validate=held_out_metrics(held_out, collate, loss_fn, a.batch_size) if held_out else None,
        description=f"align {round_index + 1}/{a.rounds}" if a.rounds > 1 else "align",
        step_offset=steps_before, log_extra={"round": round_index + 1} if a.rounds > 1 else None,
        remedy="lower --lr or --beta",
    )
    if resume and engine.resume():
        log.info(f"Resumed from step {engine.state.step + steps_before}.")
    engine.fit()
    return engine

