"""The caption ranker behind `--pairs auto` and align's win rate: scores a policy's candidate captions
for each image.

Score = CIDEr-D against the image's references (pycocoevalcap's CIDEr, tokenised in Python so that
        align needs no Java: `tokenize_in_python`)
        + the run's contrastive image–text cosine, when the run has a head
        - HALLUCINATION_PENALTY x the number of exact hallucinations (shapes data only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs, cook_test, precook

from capalign.data.shapes import find_hallucinations
from capalign.metrics.python_tokenizer import tokenize_in_python

HALLUCINATION_PENALTY = 10.0
CHUNK_IMAGES = 256  # images whose candidates are scored together (memory holds a chunk's n-gram vectors:
# about 50 KiB an image with 5 candidates and 2 references)


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


def cider_chunks(candidates: list[list[str]], references, chunk: int = CHUNK_IMAGES) -> Iterator[list[list[float]]]:
    """CIDEr-D of every candidate of every image against that image's references, `chunk` images at
    a time, equal to one pycocoevalcap Cider call over every (image, candidate) key (each image's
    references repeated once per candidate): the document frequencies of that one call are counted
    once, over the split's references (a sequence, e.g. a `datasets` column), and each chunk is
    scored against them. References are tokenised for the count and again for each chunk, so only
    a chunk's are held."""
    document_frequency = _Frequencies()
    for part in _parts(len(candidates), chunk):
        for i, refs in zip(part, _tokenized(references, part)):
            for ngram in {ngram for ref in refs for ngram in precook(ref)}:
                document_frequency[ngram] = document_frequency[ngram] + len(candidates[i])  # one per key of the one-call layout
    total = sum(len(cands) for cands in candidates)
    for part in _parts(len(candidates), chunk):
        scorer = CiderScorer(n=4, sigma=6.0)
        scorer.document_frequency = document_frequency
        tests = tokenize_in_python({str(i): candidates[i] for i in part})
        crefs = [cook_refs(refs) for i, refs in zip(part, _tokenized(references, part)) for _ in candidates[i]]
        scorer.ctest = [cook_test(c) for i in part for c in tests[str(i)]]
        scorer.crefs = _Keys(crefs, total)
        flat = iter(scorer.compute_cider())
        yield [[float(next(flat)) for _ in candidates[i]] for i in part]


def _parts(n: int, chunk: int) -> Iterator[range]:
    return (range(start, min(start + chunk, n)) for start in range(0, n, chunk))


def _tokenized(references, part: range) -> list[list[str]]:
    """The tokenised references of the images in `part` (a slice of a column reads only those rows)."""
    rows = references[part.start : part.stop]
    by_image = tokenize_in_python({str(k): list(refs) for k, refs in enumerate(rows)})
    return [by_image[str(k)] for k in range(len(rows))]


def cider_per_candidate(candidates: list[list[str]], references, chunk: int = CHUNK_IMAGES) -> list[list[float]]:
    """cider_chunks' scores of every image, in one list."""
    return [scores for part in cider_chunks(candidates, references, chunk) for scores in part]


def ranked_chunks(candidates: list[list[str]], references, objects=None, similarity=None,
                  chunk: int = CHUNK_IMAGES) -> Iterator[tuple[int, list[list[RankedCaption]]]]:
    """(first image, the ranked candidates of `chunk` images from there), so that only a chunk's
    RankedCaptions are held; higher is better. `objects` (shapes) and `similarity` are per image."""
    start = 0
    for cider in cider_chunks(candidates, references, chunk):
        ranked = []
        for i, scores in enumerate(cider, start):
            sims = similarity[i] if similarity is not None else None
            row = []
            for k, caption in enumerate(candidates[i]):
                wrong = len(find_hallucinations(caption, objects[i])) if objects is not None else 0
                score = scores[k] - HALLUCINATION_PENALTY * wrong
                if sims is not None:
                    score += sims[k]
                row.append(RankedCaption(caption, score, wrong))
            ranked.append(row)
        yield start, ranked
        start += len(cider)


def rank_candidates(
    candidates: list[list[str]],
    references,
    objects: list[list[dict]] | None = None,
    similarity=None,
) -> list[list[RankedCaption]]:
    """Score each image's candidates (ranked_chunks, in one list); higher is better."""
    return [row for _, ranked in ranked_chunks(candidates, references, objects, similarity) for row in ranked]
