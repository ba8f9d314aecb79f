"""Image-text retrieval recall (R@1/5/10, both directions) with a contrastive head.

Gallery = the evaluated images and all their reference captions. Image->text: a hit when any of the
image's references ranks in the top K; text->image: each reference is a query for its own image.
Ties count in the query's favour. Hand-written: a few lines of ranking, no library needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from capalign.metrics.clipscore import embed_image_ids
from capalign.metrics.types import RETRIEVAL_METRICS, EvaluationResult, MetricOptions


def recall_at_k(image_emb: np.ndarray, text_emb: np.ndarray, owner: np.ndarray, chunk: int = 1024):
    """Per-image i2t ranks and per-text t2i ranks (0 = first) from unit-norm embeddings."""
    n = image_emb.shape[0]
    i2t_rank = np.empty(n, dtype=np.int64)
    t2i_rank = np.empty(text_emb.shape[0], dtype=np.int64)
    for start in range(0, n, chunk):
        sims = image_emb[start : start + chunk] @ text_emb.T  # [chunk, M]
        for row, image in enumerate(range(start, min(start + chunk, n))):
            best = sims[row, owner == image].max()
            i2t_rank[image] = int(np.sum(sims[row] > best))
    for start in range(0, text_emb.shape[0], chunk):
        sims = text_emb[start : start + chunk] @ image_emb.T  # [chunk, N]
        own = sims[np.arange(sims.shape[0]), owner[start : start + chunk]]
        t2i_rank[start : start + chunk] = np.sum(sims > own[:, None], axis=1)
    return i2t_rank, t2i_rank


def score_retrieval(
    references: dict[str, list[str]],
    images: dict[str, Any] | None,
    metrics: list[str],
    result: EvaluationResult,
    options: MetricOptions,
) -> None:
    """Fill I2T-R@K / T2I-R@K with the run's contrastive head, or report them missing."""
    ids = list(references)
    if options.contrastive_scorer is None:
        for m in metrics:
            result.missing[m] = options.contrastive_missing or "retrieval needs a capalign run with a contrastive head (a results file has none)"
        return
    if not images or any(i not in images for i in ids):
        for m in metrics:
            result.missing[m] = "retrieval needs the images of the split"
        return
    scorer = options.contrastive_scorer
    image_emb = embed_image_ids(scorer, images, ids, options.batch_size).numpy()
    texts = [r for i in ids for r in references[i]]
    owner = np.array([k for k, i in enumerate(ids) for _ in references[i]])
    text_emb = scorer.embed_texts(texts).float().cpu().numpy()
    i2t, t2i = recall_at_k(image_emb, text_emb, owner)
    label = f"{options.contrastive_name or 'contrastive head'}; gallery {len(ids)} images, {len(texts)} references"
    for m in metrics:
        direction, k = m.split("-R@")
        k = int(k)
        if direction == "I2T":
            hits = (i2t < k).astype(float)
            per = dict(zip(ids, hits.tolist()))
            result.summary[m] = float(hits.mean())
        else:
            hits = (t2i < k).astype(float)
            per = {i: float(hits[owner == n].mean()) for n, i in enumerate(ids)}
            result.summary[m] = float(hits.mean())
        result.add_per_image(m, per)
        result.scorers[m] = label
    assert set(metrics) <= set(RETRIEVAL_METRICS)
