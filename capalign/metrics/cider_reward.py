"""CIDEr-D as a training reward: pycocoevalcap's `Cider` (which is CIDEr-D: n = 1..4, sigma = 6,
clipped tf-idf products and the Gaussian length penalty) with its document frequencies and the
references' tf-idf vectors computed once, so that each sampled caption costs only its own n-grams.

Written here rather than calling pycocoevalcap per batch because pycocoevalcap recomputes document
frequencies from whatever references it is handed (the batch's, not the training set's) and rebuilds
every reference vector for every candidate. The arithmetic follows pycocoevalcap 1.2's
cider_scorer.py line for line, including its quirk that the length compared by the penalty is the
number of bigrams; tests/test_cider_reward.py checks equality with it per caption.
"""

from __future__ import annotations

import math
from collections import defaultdict

from capalign.metrics.python_tokenizer import tokenize_in_python

NGRAMS = 4
SIGMA = 6.0


def _ngram_counts(text: str, n: int = NGRAMS) -> dict[tuple[str, ...], int]:
    """pycocoevalcap's precook: counts of every 1..n-gram of a whitespace-tokenised caption."""
    words = text.split()
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def document_frequency(references, n: int = NGRAMS) -> tuple[dict[tuple[str, ...], float], int]:
    """pycocoevalcap's document frequencies over tokenised references (an iterable of each image's
    reference list, read once, one image at a time): for every n-gram, the number of images whose
    references contain it; and the number of images. N-grams of one image only are left out: the
    scorer reads log(max(1, df)), which is 0 for df 1 and for a missing n-gram alike, so no score
    changes (most 3- and 4-grams are such)."""
    counts: dict[tuple[str, ...], float] = defaultdict(float)
    images = 0
    for refs in references:
        for ngram in {g for ref in refs for g in _ngram_counts(ref, n)}:
            counts[ngram] += 1
        images += 1
    return {ngram: df for ngram, df in counts.items() if df > 1}, images


class CiderD:
    """CIDEr-D of candidates against fixed references, one reference set per image.

    `references[i]` are image i's reference captions; document frequencies count, for every n-gram,
    the images whose references contain it (pycocoevalcap's definition, over these images only), unless
    `frequencies` (what `document_frequency` returns, e.g. over a whole split) is given, so that a chunk
    of a split's images is scored as in one call over the split.
    With `tokenized` False the references, and the candidates given to `scores`, are tokenised with
    capalign.metrics.python_tokenizer.tokenize_in_python (the PTB tokenizer's output on shapes, without Java)."""

    def __init__(self, references: list[list[str]], tokenized: bool = False, n: int = NGRAMS, sigma: float = SIGMA,
                 frequencies: tuple[dict[tuple[str, ...], float], int] | None = None):
        if not references or any(not refs for refs in references):
            raise ValueError("CIDEr-D needs at least one image with at least one reference")
        self.n, self.sigma, self.tokenized = n, sigma, tokenized
        if not tokenized:
            tokens = tokenize_in_python({str(i): list(refs) for i, refs in enumerate(references)})
            references = [tokens[str(i)] for i in range(len(references))]
        self.document_frequency, images = frequencies or document_frequency(references, n)
        self.ref_len = math.log(float(images))
        self._references = [[self._vector(_ngram_counts(r, n)) for r in refs] for refs in references]

    def __len__(self) -> int:
        return len(self._references)

    def _vector(self, counts: dict[tuple[str, ...], int]):
        """pycocoevalcap's counts2vec: per-order tf-idf dicts, their norms, and the bigram count."""
        vec = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for ngram, tf in counts.items():
            df = math.log(max(1.0, self.document_frequency.get(ngram, 0.0)))
            order = len(ngram) - 1
            value = float(tf) * (self.ref_len - df)
            vec[order][ngram] = value
            norm[order] += value ** 2
            if order == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, index: int, candidate: str) -> float:
        """CIDEr-D of one already-tokenised candidate against image `index`'s references."""
        return self._score(self._references[index], candidate)

    def _score(self, refs: list, candidate: str) -> float:
        vec, norm, length = self._vector(_ngram_counts(candidate, self.n))
        total = [0.0] * self.n
        for vec_ref, norm_ref, length_ref in refs:
            penalty = math.e ** (-(float(length - length_ref) ** 2) / (2 * self.sigma ** 2))
            for order in range(self.n):
                ref_order = vec_ref[order]
                value = 0.0
                for ngram, weight in vec[order].items():
                    other = ref_order.get(ngram, 0.0)
                    value += min(weight, other) * other  # CIDEr-D's clipping
                if norm[order] != 0 and norm_ref[order] != 0:
                    value /= norm[order] * norm_ref[order]
                total[order] += value * penalty
        return sum(total) / self.n / len(refs) * 10.0

    def scores(self, indices: list[int], candidates: list[str]) -> list[float]:
        """CIDEr-D of each candidate against its image's references (tokenised as the references were)."""
        return [self.score(i, c) for i, c in zip(indices, self._candidate_tokens(candidates))]

    def scores_against(self, references: list[list[str]], candidates: list[str]) -> list[float]:
        """CIDEr-D of each candidate against its own `references` (not among the images this scorer
        was built on), with this scorer's document frequencies: a streamed image's reward. Each
        distinct reference set (an image's, shared by its K samples) is tokenised and weighed once."""
        sets = list(dict.fromkeys(tuple(r) for r in references))
        token_sets: list = sets
        if not self.tokenized:
            tokens = tokenize_in_python({str(k): list(r) for k, r in enumerate(sets)})
            token_sets = [tokens[str(k)] for k in range(len(sets))]
        weighed = {refs: [self._vector(_ngram_counts(r, self.n)) for r in toks] for refs, toks in zip(sets, token_sets)}
        return [self._score(weighed[tuple(refs)], c) for refs, c in zip(references, self._candidate_tokens(candidates))]

    def _candidate_tokens(self, candidates: list[str]) -> list[str]:
        """The candidates tokenised as the references were (as given when the scorer was built on tokens)."""
        if self.tokenized:
            return list(candidates)
        tokens = tokenize_in_python({str(k): [c] for k, c in enumerate(candidates)})
        return [tokens[str(k)][0] for k in range(len(candidates))]
