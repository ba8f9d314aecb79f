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


MAX_SCORES = 1 << 22  # similarity scores held at a time (16 MiB of float32; 1,000 images already fill a block)
ROWS = 1024  # queries per block


def _ranks(queries: np.ndarray, gallery: np.ndarray, pair_query: np.ndarray, pair_item: np.ndarray) -> np.ndarray:
    """For each query, how many gallery items score strictly above its best own item (the pairs
    (pair_query, pair_item), sorted by query), holding at most MAX_SCORES scores at a time. A block of
    queries' own items are scored first, then every block of the gallery is counted against that best
    (the own blocks again, with the same product, so ties compare as equal)."""
    ranks = np.zeros(queries.shape[0], dtype=np.int64)
    rows = max(1, min(ROWS, MAX_SCORES))
    cols = max(1, MAX_SCORES // rows)
    for start in range(0, queries.shape[0], rows):
        stop = min(start + rows, queries.shape[0])
        first, last = np.searchsorted(pair_query, [start, stop])
        query, item = pair_query[first:last] - start, pair_item[first:last]
        best = np.full(stop - start, -np.inf)
        for block in np.unique(item // cols) * cols:
            sims = queries[start:stop] @ gallery[block : block + cols].T  # [<= rows, <= cols]
            inside = (item >= block) & (item < block + cols)
            np.maximum.at(best, query[inside], sims[query[inside], item[inside] - block])
        for block in range(0, gallery.shape[0], cols):
            sims = queries[start:stop] @ gallery[block : block + cols].T
            ranks[start:stop] += np.count_nonzero(sims > best[:, None], axis=1)
    return ranks


def recall_at_k(image_emb: np.ndarray, text_emb: np.ndarray, owner: np.ndarray):
    """Per-image i2t ranks and per-text t2i ranks (0 = first) from unit-norm embeddings; text t
    belongs to image owner[t]."""
    texts = np.arange(owner.shape[0])
    order = np.argsort(owner, kind="stable")
    i2t_rank = _ranks(image_emb, text_emb, owner[order], texts[order])
    t2i_rank = _ranks(text_emb, image_emb, texts, owner)
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
            per = dict(zip(ids, (np.bincount(owner, weights=hits, minlength=len(ids))
                                 / np.bincount(owner, minlength=len(ids))).tolist()))
            result.summary[m] = float(hits.mean())
        result.add_per_image(m, per)
        result.scorers[m] = label
    assert set(metrics) <= set(RETRIEVAL_METRICS)
