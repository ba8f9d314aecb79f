"""The caption ranker behind `--pairs auto` and align's win rate: scores a policy's candidate captions
for each image.

Score = CIDEr-D against the image's references (pycocoevalcap's CIDEr, tokenised in Python so that
        align needs no Java: `tokenize_in_python`)
        + the run's contrastive image–text cosine, when the run has a head
        - HALLUCINATION_PENALTY x the number of exact hallucinations (shapes data only).
"""

from __future__ import annotations

from dataclasses import dataclass

from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs, cook_test, precook

from capalign.data.shapes import find_hallucinations
from capalign.metrics.coco import tokenize_in_python

HALLUCINATION_PENALTY = 10.0
CHUNK_IMAGES = 1024  # images whose candidates are scored together (memory holds a chunk's n-gram vectors)


@dataclass
class RankedCaption:
    caption: str
    score: float
    hallucinations: int


class _Keys(list):
    """The cooked references of one chunk, whose len() is the number of keys of the whole split:
    pycocoevalcap's CiderScorer.compute_cider takes its log document count from len(crefs), and this
    keeps its own arithmetic (not a copy of it) while a chunk is scored against the split's df."""

    def __init__(self, items, total: int):
        super().__init__(items)
        self.total = total

    def __len__(self) -> int:
        return self.total


class _Frequencies(dict):
    """Document frequencies that answer 0 for an n-gram no reference holds, without storing it
    (CiderScorer looks every candidate n-gram up; a defaultdict would grow with the candidates)."""

    def __missing__(self, ngram) -> float:
        return 0.0


def cider_per_candidate(candidates: list[list[str]], references: list[list[str]],
                        chunk: int = CHUNK_IMAGES) -> list[list[float]]:
    """CIDEr-D of every candidate of every image against that image's references, equal to one
    pycocoevalcap Cider call over every (image, candidate) key (each image's references repeated
    once per candidate), computed `chunk` images at a time: the document frequencies of that one
    call are counted once, over the split's references, and each chunk is scored against them."""
    by_image = tokenize_in_python({str(i): list(refs) for i, refs in enumerate(references)})  # once per image
    tokenized = [by_image[str(i)] for i in range(len(by_image))]
    document_frequency = _Frequencies()
    for refs, cands in zip(tokenized, candidates):
        for ngram in {ngram for ref in refs for ngram in precook(ref)}:
            document_frequency[ngram] = document_frequency[ngram] + len(cands)  # one per key of the one-call layout
    total = sum(len(cands) for cands in candidates)
    scores: list[list[float]] = []
    for start in range(0, len(candidates), chunk):
        part = range(start, min(start + chunk, len(candidates)))
        scorer = CiderScorer(n=4, sigma=6.0)
        scorer.document_frequency = document_frequency
        tests = tokenize_in_python({str(i): candidates[i] for i in part})
        crefs = [cook_refs(tokenized[i]) for i in part for _ in candidates[i]]
        scorer.ctest = [cook_test(c) for i in part for c in tests[str(i)]]
        scorer.crefs = _Keys(crefs, total)
        flat = iter(scorer.compute_cider())
        scores.extend([float(next(flat)) for _ in candidates[i]] for i in part)
    return scores


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
