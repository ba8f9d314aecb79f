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

import copy
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from capalign import ui
from capalign.config import RunConfig, load_config, save_config
from capalign.data.store import load_prepared
from capalign.devices import resolve_device
from capalign.distributed import process_state
from capalign.errors import UserError
from capalign.inference.generate import DecodeOptions
from capalign.losses import info_nce, preference_loss, sequence_logps, token_cross_entropy
from capalign.models.io import foreign_model_config, load_captioner, save_captioner
from capalign.pairs.dataset import PairBatchMaker, PairSet, build_pair_sets
from capalign.model_card import write_model_card
from capalign.runs import CONFIG_NAME, finish_run, mark_finished, new_run_dir
from capalign.train import rounds
from capalign.train.engine import Engine, average_losses
from capalign.train.policy import add_lora, disable_dropout, merge_lora
from capalign.train.reports import alignment_report
from capalign.train.scst import align_scst
from capalign.train.stages import check_resume, clear_stage, record_stage

REPORT_IMAGES = 1000


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
    """Run the frozen reference once over all pairs (a progress bar counts them) and store its log-probs with them."""
    reference.eval()
    device = next(reference.parameters()).device
    values: list[tuple[float, float]] = []
    with ui.progress_bar("reference log-probs", len(pair_set)) as (progress, task):
        for batch in DataLoader(pair_set, batch_size=batch_size, collate_fn=collate):
            batch = {k: v.to(device) for k, v in batch.items()}
            chosen, rejected, _, _ = policy_logps(reference, batch, average)
            values.extend(zip(chosen.tolist(), rejected.tolist()))
            progress.update(task, completed=len(values))
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
            text = module.text_features(batch["chosen_text_input_ids"], batch["chosen_text_attention_mask"])
            logs["contrastive_loss"] = info_nce(module.head.embed_image(pooled), module.head.embed_text(text), module.head.logit_scale)
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
    sequence training: capalign.train.scst); writes a new run folder and returns it.

    With `rounds` > 1 (iterative DPO), each round makes fresh pairs with the current policy; its frozen
    reference is the pretrained model (`align.reference: pretrained`) or the previous round's policy.
    `resume` skips the rounds capalign.train.rounds records as finished (restoring the policy they
    ended with), rebuilds the next round's pairs (seeded) and continues it from its newest checkpoint."""
    if resume:
        check_resume(out, "align")
    if (Path(model_dir) / CONFIG_NAME).is_file():
        pretrained_config = load_config(Path(model_dir) / CONFIG_NAME)
        config.model, config.data = pretrained_config.model, data or pretrained_config.data
    else:  # a transformers captioner capalign did not train: no recorded data or model settings
        config.model = foreign_model_config(model_dir, config.model)
        if data is None:
            raise UserError(f"align --model {model_dir}: it is not a capalign run, so no dataset is recorded with it; "
                            "pass --data DIR_OR_NAME.")
        config.data = data
    a = config.align
    dataset = load_prepared(config.data)
    device = resolve_device(config.train.device)  # pair building, reference log-probs and report run here too
    policy, tokenizer, processor = load_captioner(model_dir, device)
    pretrained = load_captioner(model_dir, device)[0].eval().requires_grad_(False)  # reference, scorer, report baseline
    # LoRA wraps the decoder whose text-only pass feeds the head: the head is kept frozen then.
    contrastive_weight = a.contrastive_weight if policy.head is not None and not a.lora_rank else 0.0
    if policy.head is not None and not contrastive_weight:
        policy.head.requires_grad_(False)
    if a.freeze_vision is not None:
        policy.freeze(vision=a.freeze_vision)
    if a.lora_rank:
        add_lora(policy, a.lora_rank)
    if a.disable_dropout:
        disable_dropout(policy)
    if a.method == "scst":
        return align_scst(model_dir, config, dataset, policy, pretrained, tokenizer, processor, contrastive_weight,
                          out, resume, overwrite)
    scorer = pretrained if a.pair_scorer == "pretrained" else None  # None: the policy's own head
    run_dir = new_run_dir("align", out, resume=resume, overwrite=overwrite)
    main = process_state().is_main_process
    progress = _progress(run_dir, resume, a.rounds, main)
    save_config(config, run_dir / CONFIG_NAME)
    if main:
        record_stage(run_dir, "align")
    text_inputs = (lambda texts: policy.tokenize_texts(tokenizer, texts)) if contrastive_weight else None  # noqa: E731
    collate = PairBatchMaker(tokenizer, processor, config.model.max_caption_tokens, text_inputs)
    loss_fn = dpo_loss_fn(a.beta, a.loss, a.label_smoothing, a.sft_weight, contrastive_weight)
    steps = progress.steps
    reference = pretrained
    if progress.policy is not None:
        rounds.restore_policy(run_dir, policy, progress)
        ui.console.print(f"Resuming after round {progress.finished}/{a.rounds} (step {steps}).")
        if a.reference == "previous":
            reference = copy.deepcopy(policy).eval().requires_grad_(False)
    first_held_out = None  # round 1's held-out pairs, scored against the pretrained reference
    for round_index in range(progress.finished, a.rounds):
        seed = config.train.seed + 1000 * round_index
        train_pairs, held_out = round_pairs(policy, reference, scorer, tokenizer, processor, dataset, config, collate,
                                            round_index, seed)
        engine = _train_round(policy, train_pairs, held_out, collate, loss_fn, config, run_dir, round_index, seed, steps,
                              resume and round_index == progress.finished)
        if round_index == 0:
            first_held_out = held_out
        steps += engine.state.step
        policy = engine.unwrapped()
        last = round_index + 1 == a.rounds
        if not last and a.reference == "previous":
            reference = copy.deepcopy(policy).eval().requires_grad_(False)
        saved = rounds.save_policy(run_dir, policy, round_index + 1) if main and not last else None
        engine.finish()  # drops the round's checkpoints: only then is the round recorded as finished
        if saved is not None:
            rounds.record(run_dir, rounds.RoundProgress(round_index + 1, steps, saved))
    if not main:
        return run_dir
    merge_lora(policy)
    save_captioner(run_dir, policy, tokenizer, processor)
    scorer_used = ("none (the run has no contrastive head)" if pretrained.head is None else
                   f"pretrained run {model_dir} (frozen)" if scorer is not None else "the policy's own head, each round")
    mark_finished(run_dir, "align", reference=str(model_dir), data=str(config.data), steps=steps, rounds=a.rounds,
                  seed=config.train.seed, reference_each_round=a.reference, pair_scorer=scorer_used,
                  contrastive_weight=contrastive_weight, frozen=dict(policy.frozen))
    rounds.clear(run_dir)
    clear_stage(run_dir)
    report_split = next((dataset[name] for name in ("test", "validation") if name in dataset and len(dataset[name])), None)
    held_out_scores = None
    if progress.finished:  # resumed after round 1: its held-out pairs again (seeded, from the pretrained model)
        first_held_out = round_pairs(pretrained, pretrained, scorer, tokenizer, processor, dataset, config, collate, 0,
                                     config.train.seed)[1]
    if first_held_out is not None:
        with torch.no_grad():
            held_out_scores = held_out_metrics(first_held_out, collate, loss_fn, a.batch_size)(policy.eval())
    if report_split is not None:
        alignment_report(policy, pretrained, tokenizer, processor, report_split.select(range(min(REPORT_IMAGES, len(report_split)))),
                         run_dir, held_out_scores)
    write_model_card(run_dir)
    return finish_run(run_dir)  # an --overwrite replaces the old run now


def _progress(run_dir: Path, resume: bool, total: int, main: bool) -> rounds.RoundProgress:
    """The rounds an interrupted run finished (with `resume`); a fresh start forgets any recorded."""
    if not resume:
        if main:
            rounds.clear(run_dir)
        return rounds.RoundProgress()
    progress = rounds.load_progress(run_dir)
    if progress.finished >= total:
        raise UserError(f"{run_dir} finished {progress.finished} rounds already; --rounds is {total}.")
    return progress


def round_pairs(policy, reference, scorer, tokenizer, processor, dataset, config: RunConfig, collate,
                round_index: int, seed: int) -> tuple[PairSet, PairSet | None]:
    """A round's training and held-out pairs from the current policy (ranked with `scorer`'s head, or
    the policy's when None), with the reference's log-probabilities attached (the only time it runs)."""
    a = config.align
    ui.console.print(f"Round {round_index + 1}/{a.rounds}: making preference pairs and reference log-probs")
    sampling = DecodeOptions(temperature=a.candidate_temperature, top_k=a.candidate_top_k, top_p=a.candidate_top_p)
    train_pairs, held_out = build_pair_sets(dataset, policy, tokenizer, processor, a.pairs, seed, scorer, sampling)
    for pair_set in filter(None, (train_pairs, held_out)):
        attach_reference_logps(reference, pair_set, collate, a.batch_size, average=a.loss == "ipo")
    sources = Counter(p.source for p in train_pairs.pairs)
    ui.console.print(f"Round {round_index + 1}: {len(train_pairs)} training pairs ("
                     + ", ".join(f"{n} {k}" for k, n in sorted(sources.items())) + ").")
    return train_pairs, held_out


def _train_round(policy, train_pairs: PairSet, held_out: PairSet | None, collate, loss_fn, config: RunConfig,
                 run_dir: Path, round_index: int, seed: int, steps_before: int, resume: bool) -> Engine:
    """Train the policy on one round's pairs; logged steps continue from earlier rounds."""
    a = config.align
    settings = config.align_engine(seed=seed)  # stage 1's engine settings, stage 2's schedule
    engine = Engine(
        policy, loss_fn, train_pairs, collate, settings, run_dir,
        validate=held_out_metrics(held_out, collate, loss_fn, a.batch_size) if held_out else None,
        description=f"align {round_index + 1}/{a.rounds}" if a.rounds > 1 else "align",
        step_offset=steps_before, log_extra={"round": round_index + 1} if a.rounds > 1 else None,
        remedy="lower --lr or --beta",
    )
    if resume and engine.resume():
        ui.console.print(f"Resumed from step {engine.state.step + steps_before}.")
    engine.fit()
    return engine
