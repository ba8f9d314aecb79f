"""Diversity of a set of captions: distinct-1/2, vocabulary size, share copied verbatim from training.

Hand-written: these are counts over lower-cased word tokens; no standard package defines them.
"""

from __future__ import annotations

import re

from capalign.metrics.types import EvaluationResult

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped)."""
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    """Caption key for the verbatim-copy check: lower-cased words joined by single spaces."""
    return " ".join(words(text))


def distinct_n(captions: list[list[str]], n: int) -> float:
    """Distinct n-grams / all n-grams over the whole set (Li et al. 2016)."""
    grams = [tuple(ws[i : i + n]) for ws in captions for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def score_diversity(
    candidates: dict[str, str], train_captions: set[str] | None, metrics: list[str], result: EvaluationResult
) -> None:
    """Fill Distinct-1/2, Vocabulary (corpus-level) and Copied (per image, 1 = seen in training)."""
    ids = list(candidates)
    tokens = [words(candidates[i]) for i in ids]
    label = "capalign diversity (lower-cased word tokens)"
    for n, name in ((1, "Distinct-1"), (2, "Distinct-2")):
        if name in metrics:
            result.summary[name] = distinct_n(tokens, n)
            result.scorers[name] = label
    if "Vocabulary" in metrics:
        result.summary["Vocabulary"] = float(len({w for ws in tokens for w in ws}))
        result.scorers["Vocabulary"] = label
    if "Copied" in metrics:
        if train_captions is None:
            result.missing["Copied"] = "Copied needs the training captions (the dataset has no train split)"
            return
        seen = {normalize(c) for c in train_captions}
        per = {i: float(normalize(candidates[i]) in seen) for i in ids}
        result.summary["Copied"] = sum(per.values()) / max(len(per), 1)
        result.add_per_image("Copied", per)
        result.scorers["Copied"] = f"{label}; {len(seen)} distinct training captions"
