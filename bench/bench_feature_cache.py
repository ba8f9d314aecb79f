"""Frozen encoder: train time per step with the encoder's features cached vs encoding images every step.

    python bench/bench_feature_cache.py [--steps 20] [--batch-size 32] [--hidden 384] [--layers 6]

Builds a ClipCap-style run (frozen CLIP-style ViT at 224 px, patch 32 → prefix MLP → small GPT-2),
saves the backbones with save_pretrained and trains through the same `--vision PATH --decoder PATH`
code path twice: `feature_cache: false` (decode + preprocess + encode every image every step) and
`feature_cache: true` (encode each image once, then read features). Prints time per step for both,
their ratio, and the one-off cost of building the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    from capalign.config import build_config
    from capalign.data.store import prepare_shapes
    from capalign.models.tokenizer import train_word_tokenizer
    from capalign.train import feature_cache
    from capalign.train.pretrain import pretrain

    scratch = tempfile.TemporaryDirectory(prefix="capalign-bench-cache-")  # removed when the bench ends
    root = Path(scratch.name)
    os.chdir(root)
    data = prepare_shapes(root / "data" / "shapes", limit=args.images, seed=0)
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                     num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64))
                    ).save_pretrained(root / "vision")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(root / "vision")
    tokenizer = train_word_tokenizer(c for caps in data["train"]["captions"] for c in caps)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=128, n_layer=2, n_head=4)).save_pretrained(root / "decoder")
    tokenizer.save_pretrained(root / "decoder")

    def run(name: str, cache: bool) -> tuple[float, float]:
        overrides = {"model": {"vision": str(root / "vision"), "decoder": str(root / "decoder"), "freeze_vision": True},
                     "train": {"max_steps": args.steps, "batch_size": args.batch_size, "log_every": args.steps,
                               "eval_every": 10**6, "checkpoint_every": 10**6, "select": "none", "feature_cache": cache}}
        config = build_config("clipcap-mlp", None, overrides)
        started = time.perf_counter()
        pretrain(config, Path("runs") / name)
        total = time.perf_counter() - started
        last = [json.loads(l) for l in (Path("runs") / name / "metrics.jsonl").read_text().splitlines() if '"loss"' in l][-1]
        return args.batch_size / last["samples_per_s"], total

    torch.set_num_threads(torch.get_num_threads())
    uncached, uncached_total = run("uncached", False)
    built, built_total = run("cached-first", True)  # builds the cache, then trains on it
    cached, cached_total = run("cached-again", True)  # a later run: the cache is reused
    n_cache = len(list(feature_cache.CACHE_ROOT.glob("*/meta.json")))
    print(f"\nfrozen ViT ({args.hidden} wide, {args.layers} layers, 224 px), batch {args.batch_size}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, {len(data['train'])} train images")
    print(f"encode every step : {uncached * 1000:8.1f} ms/step   ({1 / uncached:.2f} steps/s; whole run {uncached_total:.1f} s)")
    print(f"cached features   : {cached * 1000:8.1f} ms/step   ({1 / cached:.2f} steps/s; whole run {cached_total:.1f} s, cache reused)")
    print(f"first cached run  : {built * 1000:8.1f} ms/step   (whole run {built_total:.1f} s, including building {n_cache} cache entries)")
    print(f"speed-up ratio    : {uncached / cached:.1f}x per step")


if __name__ == "__main__":
    main()
