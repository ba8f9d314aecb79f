"""CIDEr-D reward throughput: capalign's in-process reward (document frequencies and reference vectors
computed once) against calling pycocoevalcap's Cider on every batch (what capalign's pair ranker does).

    python bench/bench_cider_reward.py [--images 400] [--batch-images 32] [--samples 5] [--batches 20]

Generates a shapes dataset of `--images` images in a temporary folder, takes its training references,
and scores `--batches` batches of `--batch-images` images x `--samples` candidate captions (other
images' references, drawn with a fixed seed), both ways, with the same Python tokenisation. Prints
captions scored per second for each and their ratio (one run; the machine's load shows in both).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-images", type=int, default=32)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    from capalign.data.store import prepare_shapes
    from capalign.metrics.cider_reward import CiderD
    from capalign.pairs.ranker import cider_per_candidate

    with tempfile.TemporaryDirectory() as tmp:
        references = [list(c) for c in prepare_shapes(Path(tmp) / "shapes", limit=args.images)["train"]["captions"]]
    rng = random.Random(0)
    pool = [c for refs in references for c in refs]
    batches = []
    for _ in range(args.batches):
        images = rng.sample(range(len(references)), min(args.batch_images, len(references)))
        batches.append((images, [[rng.choice(pool) for _ in range(args.samples)] for _ in images]))
    total = sum(len(images) * args.samples for images, _ in batches)

    started = time.perf_counter()
    reward = CiderD(references)  # once per training run
    setup = time.perf_counter() - started
    started = time.perf_counter()
    for images, candidates in batches:
        reward.scores([i for i in images for _ in range(args.samples)], [c for cs in candidates for c in cs])
    ours = total / (time.perf_counter() - started)

    started = time.perf_counter()
    for images, candidates in batches:
        cider_per_candidate(candidates, [references[i] for i in images])
    theirs = total / (time.perf_counter() - started)

    print(f"{len(references)} training images' references; {args.batches} batches of {args.batch_images} images x "
          f"{args.samples} captions ({total} captions)")
    print(f"capalign CiderD (set up once in {setup:.2f} s): {ours:,.0f} captions/s")
    print(f"pycocoevalcap Cider per batch:              {theirs:,.0f} captions/s")
    print(f"ratio: {ours / theirs:.1f}x (one run on a shared machine)")


if __name__ == "__main__":
    main()
