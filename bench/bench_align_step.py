"""Stage-2 step time: reference log-probabilities precomputed once (what capalign does) against
running the frozen reference inside every step (what a live-reference DPO loop does).

    python bench/bench_align_step.py [--run RUN_DIR] [--steps 10] [--repeats 3] [--batch-size 32] [--device cpu]

Without `--run`, a `tiny`-preset model is built from config (random weights; step time does not
depend on them) on 400 shapes images. With `--run`, that finished pretrain run is benchmarked (e.g. a
real-size `clip-gpt2` run). Both variants train a copy of the same policy with align's own loss
(`dpo_loss_fn`: DPO + SFT + auxiliary contrastive term, the tiny preset's settings) on the same
pre-collated batches of reference-versus-corrupted pairs, in alternating blocks of `--steps` steps,
`--repeats` times each, so the machine's noise hits both alike. Prints the median step time of each,
their ratio (goal: ≥ 1.5x), and the one-off cost of precomputing the reference over all the pairs.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a finished pretrain run (default: a tiny model)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    from capalign.config import PRESETS, ModelConfig, load_config
    from capalign.data.store import prepare_shapes
    from capalign.devices import resolve_device
    from capalign.models.build import build_captioner
    from capalign.models.io import load_captioner
    from capalign.pairs.dataset import PairBatchMaker, PairSet
    from capalign.pairs.generated import corrupted_pairs
    from capalign.runs import CONFIG_NAME
    from capalign.train.align import attach_reference_logps, dpo_loss_fn, policy_logps
    from capalign.train.policy import disable_dropout

    device = resolve_device(args.device)
    scratch = tempfile.TemporaryDirectory(prefix="capalign-bench-align-")  # removed when the bench ends
    root = Path(scratch.name)
    split = prepare_shapes(root / "shapes", limit=400, seed=0)["train"]
    torch.manual_seed(0)
    if args.run is None:
        policy, tokenizer, processor = build_captioner(ModelConfig(), (c for caps in split["captions"] for c in caps), with_head=True)
        policy.to(device)
    else:
        policy, tokenizer, processor = load_captioner(args.run, device)
    disable_dropout(policy)  # as align trains it
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    settings = PRESETS["tiny"]["align"]
    max_tokens = (ModelConfig() if args.run is None else load_config(args.run / CONFIG_NAME).model).max_caption_tokens
    collate = PairBatchMaker(tokenizer, processor, max_tokens, lambda texts: policy.tokenize_texts(tokenizer, texts))
    loss_fn = dpo_loss_fn(0.1, "sigmoid", 0.0, settings["sft_weight"], contrastive_weight=0.5)

    pairs = PairSet(split, corrupted_pairs(split, seed=0))
    started = time.perf_counter()
    attach_reference_logps(reference, pairs, collate, args.batch_size, average=False)
    precompute_s = time.perf_counter() - started
    order = range(0, args.steps * args.batch_size, args.batch_size)
    batches = [collate([pairs[(i + k) % len(pairs)] for k in range(args.batch_size)]) for i in order]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def live_reference(batch: dict) -> dict:
        """What a live-reference loop adds to each step: the frozen reference's forward pass."""
        with torch.no_grad():
            chosen, rejected, _, _ = policy_logps(reference, batch, average=False)
        return {**batch, "ref_chosen": chosen, "ref_rejected": rejected}

    def block(model, optimizer, prepare) -> float:
        """Seconds per optimiser step over one block of steps."""
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        began = time.perf_counter()
        for batch in batches:
            loss, _ = loss_fn(model, prepare(batch))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        return (time.perf_counter() - began) / len(batches)

    variants = {}
    for name, prepare in (("precomputed", lambda b: b), ("live", live_reference)):
        model = copy.deepcopy(policy).train()
        variants[name] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4), prepare, [])
    for name, (model, optimizer, prepare, _) in variants.items():  # warm-up block, not counted
        block(model, optimizer, prepare)
    for _ in range(args.repeats):
        for name, (model, optimizer, prepare, times) in variants.items():
            times.append(block(model, optimizer, prepare))

    precomputed = statistics.median(variants["precomputed"][3])
    live = statistics.median(variants["live"][3])
    parameters = sum(p.numel() for p in policy.parameters())
    print(f"\nstage-2 step, {'tiny preset' if args.run is None else args.run} ({parameters / 1e6:.1f} M parameters), "
          f"batch {args.batch_size} pairs, {device}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} blocks of {args.steps} steps")
    print(f"reference precomputed : {precomputed * 1000:8.1f} ms/step   blocks: "
          + ", ".join(f"{t * 1000:.1f}" for t in variants["precomputed"][3]))
    print(f"reference live        : {live * 1000:8.1f} ms/step   blocks: "
          + ", ".join(f"{t * 1000:.1f}" for t in variants["live"][3]))
    print(f"speed-up ratio        : {live / precomputed:.2f}x per step (goal >= 1.5x)")
    print(f"one-off precompute    : {precompute_s:.1f} s for {len(pairs)} pairs "
          f"(= {precompute_s / (live - precomputed):.0f} steps' saving)" if live > precomputed else "")


if __name__ == "__main__":
    main()
