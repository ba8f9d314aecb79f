"""The caption ranker behind `--pairs auto` and align's win rate: scores a policy's candidate captions
for each image.

Score = CIDEr-D against the image's references (pycocoevalcap's CIDEr, tokenised in Python so that
        align needs no Java: `tokenize_in_python`)
        + the run's contrastive image–text cosine, when the run has a head
        - HALLUCINATION_PENALTY x the number of exact hallucinations (shapes data only).
"""

from __future__ import annotations

from dataclasses import dataclass

from pycocoevalcap.cider.cider import Cider

from capalign.data.shapes import find_hallucinations
from capalign.metrics.coco import tokenize_in_python

HALLUCINATION_PENALTY = 10.0


@dataclass
class RankedCaption:
    caption: str
    score: float
    hallucinations: int


def cider_per_candidate(candidates: list[list[str]], references: list[list[str]]) -> list[list[float]]:
    """CIDEr-D of every candidate of every image against that image's references, in one pass.

    Repeating an image's references once per candidate leaves CIDEr's document frequencies in the
    same proportion, so each candidate scores as it would alone against the same reference set."""

    keys = [f"{i}/{k}" for i, cands in enumerate(candidates) for k in range(len(cands))]
    tokenized = tokenize_in_python({str(i): refs for i, refs in enumerate(references)})  # once per image
    refs = {f"{i}/{k}": tokenized[str(i)] for i, cands in enumerate(candidates) for k in range(len(cands))}
    cands = tokenize_in_python({f"{i}/{k}": [c] for i, cs in enumerate(candidates) for k, c in enumerate(cs)})
    _, scores = Cider().compute_score({k: refs[k] for k in keys}, {k: cands[k] for k in keys})
    by_key = dict(zip(keys, scores))
    return [[float(by_key[f"{i}/{k}"]) for k in range(len(cs))] for i, cs in enumerate(candidates)]


def rank_candidates(
    candidates: list[list[str]],
    references: list[list[str]],
    objects: list[list[dict]] | None = None,
    similarity: list[list[float]] | None = None,
) -> list[list[RankedCaption]]:
    """Score each image's candidates; higher is better."""
    cider = cider_per_candidate(candidates, references)
    ranked = []
    for i, cands in enumerate(candidates):
        row = []
        for k, caption in enumerate(cands):
            wrong = len(find_hallucinations(caption, objects[i])) if objects is not None else 0
            score = cider[i][k] - HALLUCINATION_PENALTY * wrong
            if similarity is not None:
                score += similarity[i][k]
            row.append(RankedCaption(caption, score, wrong))
        ranked.append(row)
    return ranked
