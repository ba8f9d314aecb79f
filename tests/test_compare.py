"""Bootstrap intervals, permutation p-values and win rates on synthetic data with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from capalign.evaluation.stats import _mean, bootstrap_ci, bootstrap_counts, compare_systems, permutation_p, win_rates
from capalign.metrics import EvaluationResult
from capalign.metrics.coco import bleu_from_stats


def test_bootstrap_interval_covers_the_true_mean():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        sample = rng.beta(2, 5, size=80)  # skewed per-image scores, true mean 2/7
        counts = bootstrap_counts(80, 1000, rng)
        low, high = bootstrap_ci(sample[:, None], _mean, counts)
        covered += low <= 2 / 7 <= high
    assert covered / 200 >= 0.90


def test_bootstrap_interval_shrinks_with_more_images():
    rng = np.random.default_rng(2)
    widths = []
    for n in (50, 2000):
        x = rng.normal(size=(n, 1))
        low, high = bootstrap_ci(x, _mean, bootstrap_counts(n, 500, rng))
        widths.append(high - low)
    assert widths[1] < widths[0] / 4


def test_permutation_p_values():
    rng = np.random.default_rng(3)
    null_small = 0
    for _ in range(100):
        a, b = rng.normal(size=(60, 1)), rng.normal(size=(60, 1))
        null_small += permutation_p(a, b, _mean, 500, rng) < 0.05
    assert null_small <= 12  # about 5 expected under the null
    a = rng.normal(size=(200, 1))
    assert permutation_p(a, a + 0.3 + rng.normal(scale=0.2, size=(200, 1)), _mean, 500, rng) < 0.01


def test_win_rates():
    a, b = np.array([0.1, 0.5, 0.5, 0.9]), np.array([0.2, 0.5, 0.4, 1.0])
    assert win_rates(a, b, False) == pytest.approx((0.5, 0.25, 0.25))
    assert win_rates(a, b, True) == pytest.approx((0.25, 0.25, 0.5))


def _result(scores: dict[str, float], bleu: dict[str, list[float]]) -> EvaluationResult:
    r = EvaluationResult()
    r.summary["CIDEr"] = float(np.mean(list(scores.values())))
    r.add_per_image("CIDEr", scores)
    totals = np.array(list(bleu.values())).sum(0)
    r.summary["BLEU-4"] = float(bleu_from_stats(totals)[3])
    r.add_per_image("BLEU-4", {k: 0.0 for k in scores})
    r.stats["BLEU"] = bleu
    return r


def test_compare_systems_rows():
    rng = np.random.default_rng(4)
    ids = [f"{k}" for k in range(150)]
    stats = lambda: {i: [10, 10, 10, 9, 8, 7, *rng.integers(3, 8, size=1).tolist(), 3, 2, 1] for i in ids}
    base = _result({i: float(rng.normal(1.0, 0.3)) for i in ids}, stats())
    better = _result({i: base.per_image[i]["CIDEr"] + 0.2 for i in ids}, stats())
    rows = compare_systems({"base": base, "better": better}, ["CIDEr", "BLEU-4"], n_boot=500, n_perm=500, ids=ids)
    by = {(r.metric, r.system): r for r in rows}
    cider = by[("CIDEr", "better")]
    assert cider.delta == pytest.approx(0.2) and cider.delta_low == pytest.approx(0.2) and cider.p_value < 0.01
    assert cider.win == 1.0 and cider.ci_low < cider.value < cider.ci_high
    bleu = by[("BLEU-4", "base")]
    assert bleu.ci_low <= bleu.value <= bleu.ci_high and bleu.ci_low < bleu.ci_high  # exact BLEU resampling
    assert by[("BLEU-4", "better")].p_value is not None and by[("CIDEr", "base")].p_value is None


def test_meteor_interval_contains_its_corpus_score():
    rng = np.random.default_rng(7)
    ids = [str(k) for k in range(120)]
    result = EvaluationResult()
    result.add_per_image("METEOR", {i: float(v) for i, v in zip(ids, rng.uniform(0.6, 1.0, size=len(ids)))})
    result.summary["METEOR"] = 0.55  # a corpus score well below the per-image mean, as METEOR gives
    (row,) = compare_systems({"a": result}, ["METEOR"], ids=ids)
    assert row.ci_low < 0.55 < row.ci_high
    assert row.ci_high - row.ci_low < 0.05
