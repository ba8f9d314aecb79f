"""Text metrics scored a chunk of images at a time equal pycocoevalcap's single call, and their memory
per image does not grow with the number of images."""

from __future__ import annotations

import json
import random
import tracemalloc

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

import capalign.metrics.coco as coco
from capalign.metrics import evaluate_captions
from capalign.metrics.python_tokenizer import tokenize_in_python
from capalign.metrics.types import EvaluationResult

from conftest import refdata

TEXT = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
WORDS = [f"w{k}" for k in range(300)] + ["a", "the", "on", "red", "dog"]


def synthetic(n_images: int, seed: int = 0, refs: int = 5):
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))

    references = {f"{k:05d}": [sentence() for _ in range(refs)] for k in range(n_images)}
    candidates = {k: (rng.choice(v) if rng.random() < 0.3 else sentence()) for k, v in references.items()}
    return candidates, references


def coco_fakecap():
    captions = [r["caption"] for r in json.loads((refdata("coco_fakecap") / "captions_val2014_fakecap_results.json").read_text())]
    refs = {f"{k:03d}": captions[6 * k : 6 * k + 5] for k in range(len(captions) // 6)}
    return {f"{k:03d}": captions[6 * k + 5] for k in range(len(captions) // 6)}, refs


def published(example: str, which: str):
    folder = refdata(example)
    return json.loads((folder / f"{which}_captions.json").read_text()), json.loads((folder / "refs.json").read_text())


def _single_calls(gts, res) -> dict[str, tuple[float, list[float]]]:
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    direct = {f"BLEU-{k + 1}": (bleu[k], bleu_per[k]) for k in range(4)}
    direct["ROUGE-L"] = Rouge().compute_score(gts, res)
    direct["CIDEr"] = Cider().compute_score(gts, res)
    return direct


@pytest.mark.parametrize("data,chunk", [
    (lambda: synthetic(300), 64),  # five chunks, the last one short
    (lambda: synthetic(300), 1024),
    (coco_fakecap, 50),
    (lambda: published("clipscore_example", "good"), 1),
    (lambda: published("pacscore_example", "bad"), 1),
])
def test_chunked_text_metrics_equal_one_pycocoevalcap_call(monkeypatch, data, chunk):
    cands, refs = data()
    ids = sorted(cands)
    gts = tokenize_in_python({i: refs[i] for i in ids})  # the same tokens for both: the scorers are compared
    res = tokenize_in_python({i: [cands[i]] for i in ids})
    monkeypatch.setattr(coco, "CHUNK_IMAGES", chunk)
    ours = EvaluationResult()
    coco.score_tokenized(ids, gts, res, TEXT, ours)
    for name, (corpus, per) in _single_calls(gts, res).items():
        assert ours.summary[name] == pytest.approx(corpus, abs=1e-12, rel=0), name
        assert [ours.per_image[i][name] for i in ids] == pytest.approx([float(x) for x in per], abs=1e-12, rel=0), name
    assert ours.summary["CIDEr"] > 0.05 and ours.summary["BLEU-1"] > 0.05  # not a comparison of zeros
    totals = np.array([ours.stats["BLEU"][i] for i in ids]).sum(axis=0)
    assert coco.bleu_from_stats(totals) == pytest.approx([ours.summary[f"BLEU-{k}"] for k in range(1, 5)], abs=1e-12)


def _peak_bytes_per_image(monkeypatch, n_images: int) -> tuple[float, float]:
    """(peak, retained) bytes per image of evaluate_captions' BLEU and CIDEr, inputs excluded; the
    Python tokenizer stands in for the PTB tokenizer (no Java)."""
    monkeypatch.setattr(coco, "tokenize", tokenize_in_python)
    monkeypatch.setattr(coco, "java_missing", lambda: None)
    evaluate_captions(*synthetic(5, seed=2), ["BLEU-4", "CIDEr"])  # imports and caches, once
    cands, refs = synthetic(n_images, seed=1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = evaluate_captions(cands, refs, ["BLEU-4", "CIDEr"])
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.per_image) == n_images and result.summary["CIDEr"] > 0
    return (peak - before) / n_images, (retained - before) / n_images


def test_text_metrics_memory_per_image_does_not_grow(monkeypatch):
    monkeypatch.setattr(coco, "CHUNK_IMAGES", 300)  # the sizes of the default 1,024, at a third of the time
    small_peak, small_kept = _peak_bytes_per_image(monkeypatch, 300)
    large_peak, large_kept = _peak_bytes_per_image(monkeypatch, 2400)
    print(f"bytes per image: 300 images peak {small_peak:,.0f} kept {small_kept:,.0f}; "
          f"2400 images peak {large_peak:,.0f} kept {large_kept:,.0f}")
    # 300 images are one chunk, 2,400 are eight: what grows with the images (the tokenized captions,
    # CIDEr's document frequencies, the per-image results) is a fixed amount per image
    assert large_peak < 1.1 * small_peak and large_kept < 1.1 * small_kept
