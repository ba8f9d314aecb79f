"""Stage 2: reference log-probs are computed once, and a very large beta keeps the policy at its reference."""

import copy
from pathlib import Path

import torch

from capalign.config import build_config
from capalign.models.io import load_captioner
from capalign.train import align as align_module
from capalign.train import stage2
from capalign.pairs.dataset import PairBatchMaker, PairSet, make_pairs
from capalign.train.align import policy_logps


def _align(pretrained_run: Path, out: Path, **align_options) -> Path:
    config = build_config(None, pretrained_run.parent.parent / "tiny.yaml", {"align": {"batch_size": 8, **align_options}})
    return align_module.align(pretrained_run, config, out=out)


def test_reference_logps_are_computed_once_however_long_training_runs(pretrained_run, in_workspace, monkeypatch):
    calls = {"reference": 0, "copies": 0}
    real_copy = stage2.frozen_copy

    def counting_copy(module):
        reference = real_copy(module)
        calls["copies"] += 1
        if calls["copies"] == 1:  # align loads the run once and freezes a copy of it: the reference
            encode = reference.encode_images

            def counted(pixel_values):
                calls["reference"] += 1
                return encode(pixel_values)

            reference.encode_images = counted
        return reference

    monkeypatch.setattr(stage2, "frozen_copy", counting_copy)
    counts = []
    for steps in (2, 6):
        calls.update(reference=0, copies=0)
        _align(pretrained_run, Path(f"runs/once-{steps}"), max_steps=steps, pairs="corrupted")
        counts.append(calls["reference"])
    assert counts[0] == counts[1] > 0


def test_the_run_is_loaded_once_and_the_reference_is_an_independent_frozen_copy(pretrained_run, in_workspace, monkeypatch):
    loads = []
    real_load = stage2.load_captioner
    monkeypatch.setattr(stage2, "load_captioner", lambda *args: loads.append(args) or real_load(*args))
    config = build_config(None, pretrained_run.parent.parent / "tiny.yaml", {"align": {"lora_rank": 0}})
    before = copy.deepcopy(config)
    start = stage2.load_start(pretrained_run, stage2.resolve_config(pretrained_run, config, None))
    assert len(loads) == 1
    assert config == before  # the caller's settings are left as they were
    policy, reference = dict(start.policy.named_parameters()), dict(start.pretrained.named_parameters())
    assert policy.keys() == reference.keys()
    assert not {p.data_ptr() for p in policy.values()} & {p.data_ptr() for p in reference.values()}
    assert not any(p.requires_grad for p in reference.values()) and any(p.requires_grad for p in policy.values())
    assert all(torch.equal(policy[name], reference[name]) for name in policy)
    with torch.no_grad():
        next(iter(policy.values())).add_(1.0)
    name = next(iter(policy))
    assert not torch.equal(policy[name], reference[name])  # training the policy leaves the reference where it was


def _drift(run: Path, reference: Path, workspace: Path) -> float:
    """Mean absolute difference of caption log-probs between a run and its reference on validation pairs."""
    from datasets import load_from_disk

    split = load_from_disk(str(workspace / "data" / "shapes"))["validation"]
    ref_model, tokenizer, processor = load_captioner(reference)
    pairs = PairSet(split, make_pairs(split, ref_model, tokenizer, processor, "corrupted", seed=0))
    batch = PairBatchMaker(tokenizer, processor, 20)([pairs[i] for i in range(len(pairs))])
    policy, _, _ = load_captioner(run)
    with torch.no_grad():
        ref_c, ref_r, _, _ = policy_logps(ref_model.eval(), batch, average=False)
        pol_c, pol_r, _, _ = policy_logps(policy.eval(), batch, average=False)
    return float(torch.cat([pol_c - ref_c, pol_r - ref_r]).abs().mean())


def test_very_large_beta_stays_close_to_the_reference(pretrained_run, in_workspace):
    # the DPO term alone; Adam makes the first steps equally long whatever beta, so a large beta shows
    # only once its gradient has vanished: enough steps for the small one to keep moving meanwhile
    options = dict(max_steps=24, lr=1e-3, sft_weight=0.0, contrastive_weight=0.0, pairs="corrupted")
    small = _align(pretrained_run, Path("runs/beta-small"), beta=0.1, **options)
    large = _align(pretrained_run, Path("runs/beta-large"), beta=1000.0, **options)
    small_drift = _drift(small, pretrained_run, in_workspace)
    large_drift = _drift(large, pretrained_run, in_workspace)
    assert large_drift < 0.5 * small_drift


def test_lora_alignment_changes_only_the_decoder_and_saves_a_plain_model(pretrained_run, in_workspace):
    from safetensors.torch import load_file

    run = _align(pretrained_run, Path("runs/lora"), max_steps=3, lr=1e-2, lora_rank=2, pairs="corrupted")
    before, after = load_file(str(pretrained_run / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert set(before) == set(after)  # merged: no adapter weights left in the saved model
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("decoder.") for name in changed)


def test_iterative_rounds_log_continuing_steps_and_report(pretrained_run, in_workspace):
    import json

    run = _align(pretrained_run, Path("runs/rounds"), max_steps=2, rounds=2, pairs="corrupted")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "rewards/margins" in r]
    assert [(r["round"], r["step"]) for r in trained] == [(1, 2), (2, 4)]
    assert json.loads((run / "run.json").read_text())["rounds"] == 2
    report = json.loads((run / "alignment_report.json").read_text())
    assert 0.0 <= report["aligned"]["Hallucination"] <= 1.0
    assert abs(report["win_rate"] + report["tie_rate"] + report["loss_rate"] - 1.0) < 1e-9


def test_alignment_trains_the_head_and_ranks_pairs_with_the_frozen_pretrained_model(pretrained_run, in_workspace, monkeypatch):
    import json

    import capalign.pairs.dataset as pair_dataset

    scorers = []
    real_similarity = pair_dataset.head_similarity

    def recording_similarity(captioner, *args):
        scorers.append(captioner)
        return real_similarity(captioner, *args)

    monkeypatch.setattr(pair_dataset, "head_similarity", recording_similarity)
    run = _align(pretrained_run, Path("runs/keeps-head"), max_steps=3, rounds=2, lr=1e-2)
    # every round's pairs are ranked by one frozen model, not by the (changing) policy
    assert len(scorers) == 4 and all(s is scorers[0] for s in scorers)
    assert not any(p.requires_grad for p in scorers[0].parameters())
    info = json.loads((run / "run.json").read_text())
    assert info["pair_scorer"].startswith("pretrained run") and info["contrastive_weight"] == 0.5
    assert info["reference_each_round"] == "pretrained"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("contrastive_loss" in r for r in records)
    before, _, _ = load_captioner(pretrained_run)
    after, _, _ = load_captioner(run)
    assert not torch.equal(before.head.image_proj.weight, after.head.image_proj.weight)  # the head kept training
    report = json.loads((run / "alignment_report.json").read_text())
    assert {"I2T-R@1", "I2T-R@5", "T2I-R@1", "T2I-R@5"} <= set(report["aligned"]) and 0 <= report["aligned"]["I2T-R@1"] <= 1


def test_zero_contrastive_weight_keeps_the_head_frozen(pretrained_run, in_workspace):
    run = _align(pretrained_run, Path("runs/frozen-head"), max_steps=2, contrastive_weight=0.0)
    before, _, _ = load_captioner(pretrained_run)
    after, _, _ = load_captioner(run)
    assert torch.equal(before.head.image_proj.weight, after.head.image_proj.weight)


def _first_step_rewards(run: Path) -> dict:
    import json

    return next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "rewards/chosen" in line)


def test_dropout_is_off_in_stage_2_by_default_so_the_untrained_policy_matches_its_reference(pretrained_run, in_workspace):
    import json

    default = _first_step_rewards(_align(pretrained_run, Path("runs/no-dropout"), max_steps=1, log_every=1))
    kept = _first_step_rewards(_align(pretrained_run, Path("runs/dropout"), max_steps=1, log_every=1, disable_dropout=False))
    # step 1's rewards are measured before any update: the policy is still the reference
    assert abs(default["rewards/chosen"]) < 1e-4 and abs(default["rewards/rejected"]) < 1e-4
    assert abs(kept["rewards/chosen"]) + abs(kept["rewards/rejected"]) > 1e-3  # dropout makes them noise
    saved = json.loads((in_workspace / "runs/no-dropout/config.json").read_text())
    assert saved["decoder"]["resid_pdrop"] == 0.1  # the saved model keeps its own rates
    assert "dropout off" in (in_workspace / "runs/no-dropout/README.md").read_text()
    assert "dropout on" in (in_workspace / "runs/dropout/README.md").read_text()
