"""Several systems on the same images: bootstrap confidence intervals, paired significance, win rates.

Hand-written with numpy (a few vectorised lines; scipy.stats.bootstrap cannot resample corpus-level
BLEU through its sufficient statistics, which is what makes BLEU intervals exact here).

- CI: percentile bootstrap over images (default 1000 resamples, 95 %). Metrics that are means of
  per-image scores are resampled as means; BLEU from summed n-gram statistics (pycocoevalcap's
  formula); CHAIR-i as a ratio of sums. METEOR's corpus score is not a mean of its per-image scores:
  its interval is the per-image mean's, rescaled by corpus score / per-image mean (said in `notes`). Corpus-only metrics (Distinct-n,
  Vocabulary) get no interval.
- p-value vs the first system: paired approximate-randomisation (permutation) test, swapping the two
  systems' outputs per image at random; two-sided, (1 + #|Δ*| >= |Δ|) / (1 + R). Uncorrected for
  multiple comparisons.
- Win rate: share of images where the system's per-image score beats the first system's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from capalign.metrics import CORPUS_ONLY, LOWER_IS_BETTER, EvaluationResult
from capalign.metrics.coco import bleu_from_stats

Finalize = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class Row:
    """One (metric, system) line of a comparison."""

    metric: str
    system: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    delta: float | None = None  # system - first system
    delta_low: float | None = None
    delta_high: float | None = None
    p_value: float | None = None
    win: float | None = None
    tie: float | None = None
    loss: float | None = None


def _mean(totals: np.ndarray, n: int) -> np.ndarray:
    return totals[..., 0] / n


def _ratio(totals: np.ndarray, n: int) -> np.ndarray:
    return np.divide(totals[..., 0], totals[..., 1], out=np.zeros_like(totals[..., 0]), where=totals[..., 1] > 0)


def statistic(result: EvaluationResult, metric: str, ids: list[str]) -> tuple[np.ndarray, Finalize] | None:
    """Per-image statistics X [N, d] and finalize(sum of rows, N) -> corpus score, or None when the metric
    has no per-image decomposition."""
    if metric.startswith("BLEU-") and "BLEU" in result.stats:
        k = int(metric[-1]) - 1
        return np.array([result.stats["BLEU"][i] for i in ids]), lambda s, n: bleu_from_stats(s)[..., k]
    if metric == "CHAIR-i" and "CHAIR-i" in result.stats:
        return np.array([result.stats["CHAIR-i"][i] for i in ids]), _ratio
    if metric in CORPUS_ONLY or any(metric not in result.per_image.get(i, {}) for i in ids):
        return None
    x = np.array([[result.per_image[i][metric]] for i in ids], dtype=np.float64)
    if metric == "METEOR" and x.mean() > 0:
        # The corpus score comes from summed alignment statistics, not the per-image mean: hold their
        # ratio fixed, so resamples vary like the mean and the full sample gives the corpus score.
        scale = result.summary[metric] / x.mean()
        return x, lambda totals, n: _mean(totals, n) * scale
    return x, _mean


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] multiplicities of each image in each bootstrap resample."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def bootstrap_ci(x: np.ndarray, finalize: Finalize, counts: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of finalize(sum) under the given resample counts."""
    values = finalize(counts @ x, x.shape[0])
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def permutation_p(x_a: np.ndarray, x_b: np.ndarray, finalize: Finalize, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided paired approximate-randomisation p-value for finalize(B) - finalize(A)."""
    n = x_a.shape[0]
    sum_a, sum_b, diff = x_a.sum(0), x_b.sum(0), x_b - x_a
    observed = abs(float(finalize(sum_b, n) - finalize(sum_a, n)))
    extreme = 0
    for start in range(0, n_perm, 250):
        swaps = rng.integers(0, 2, size=(min(250, n_perm - start), n)).astype(np.float64) @ diff
        deltas = finalize(sum_b - swaps, n) - finalize(sum_a + swaps, n)
        extreme += int(np.sum(np.abs(deltas) >= observed - 1e-12))
    return (1 + extreme) / (1 + n_perm)


def win_rates(a: np.ndarray, b: np.ndarray, lower_is_better: bool) -> tuple[float, float, float]:
    """(win, tie, loss) shares of images for b against a."""
    better = (b < a) if lower_is_better else (b > a)
    ties = np.isclose(a, b, rtol=0, atol=1e-12)
    win = float(np.mean(better & ~ties))
    tie = float(np.mean(ties))
    return win, tie, 1.0 - win - tie


def compare_systems(
    results: dict[str, EvaluationResult],
    metrics: list[str],
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    ids: list[str] | None = None,
) -> list[Row]:
    """Rows for every metric and system; the first system is the baseline for Δ, p and win rates.
    All systems must have been scored on the same image ids."""
    names = list(results)
    ids = list(ids) if ids is not None else sorted(next(iter(results.values())).per_image)
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    counts_cache: dict[int, np.ndarray] = {}
    for metric in metrics:
        base_stat = None
        for position, name in enumerate(names):
            result = results[name]
            if metric not in result.summary:
                continue
            row = Row(metric, name, result.summary[metric])
            stat = statistic(result, metric, ids) if ids else None
            if stat is not None:
                x, finalize = stat
                counts = counts_cache.setdefault(len(ids), bootstrap_counts(len(ids), n_boot, rng))
                row.ci_low, row.ci_high = bootstrap_ci(x, finalize, counts, level)
                if position == 0:
                    base_stat = stat
                elif base_stat is not None and base_stat[0].shape == x.shape:
                    x_a = base_stat[0]
                    deltas = finalize(counts @ x, len(ids)) - finalize(counts @ x_a, len(ids))
                    alpha = (1 - level) / 2
                    row.delta_low, row.delta_high = (float(np.quantile(deltas, q)) for q in (alpha, 1 - alpha))
                    row.p_value = permutation_p(x_a, x, finalize, n_perm, rng)
                    if metric not in CORPUS_ONLY and all(metric in result.per_image[i] for i in ids):
                        a = np.array([results[names[0]].per_image[i][metric] for i in ids])
                        b = np.array([result.per_image[i][metric] for i in ids])
                        row.win, row.tie, row.loss = win_rates(a, b, metric in LOWER_IS_BETTER)
            if position > 0 and metric in results[names[0]].summary:
                row.delta = result.summary[metric] - results[names[0]].summary[metric]
            rows.append(row)
    return rows


def rows_to_json(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


NOTES = [
    "CI: percentile bootstrap over images; BLEU resampled via n-gram statistics, CHAIR-i as a ratio of sums.",
    "METEOR CI: the per-image mean's interval rescaled by corpus score / per-image mean (its corpus score comes from summed alignment statistics).",
    "p: paired permutation test against the first system, two-sided, uncorrected for multiple comparisons.",
]
