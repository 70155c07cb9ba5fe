"""Paired statistics against known answers and simulated coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from services.evaluator import stats


def test_mcnemar_exact_known_table() -> None:
    # Bentur et al. airway data used by Fagerland, Lydersen & Laake (2013): discordant 1 vs 7.
    # Exact conditional McNemar: 2 * P(X <= 1 | Bin(8, 1/2)) = 2 * 9/256 = 0.0703125.
    assert stats.mcnemar_exact(1, 7) == pytest.approx(18 / 256, abs=1e-12)
    assert stats.mcnemar_exact(7, 1) == pytest.approx(18 / 256, abs=1e-12)
    # Hand-computed: 2 * (1 + 10 + 45) / 1024.
    assert stats.mcnemar_exact(2, 8) == pytest.approx(112 / 1024, abs=1e-12)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0


@pytest.mark.parametrize(("b", "c"), [(0, 6), (3, 9), (12, 4), (20, 31)])
def test_mcnemar_matches_an_independent_binomial_test(b: int, c: int) -> None:
    assert stats.mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_pair_table_and_binary_comparison() -> None:
    cand = [1, 1, 0, 1, 0, 1, 1, 0]
    base = [1, 0, 0, 0, 1, 0, 1, 0]
    table = stats.PairTable.from_outcomes(cand, base)
    assert (table.both, table.cand_only, table.base_only, table.neither) == (2, 3, 1, 2)
    res = stats.compare_binary(cand, base)
    assert res.delta == pytest.approx(2 / 8)
    assert res.candidate == pytest.approx(5 / 8) and res.baseline == pytest.approx(3 / 8)
    assert res.ci_low < res.delta < res.ci_high
    assert res.p_value == pytest.approx(stats.mcnemar_exact(3, 1))


def test_newcombe_interval_contains_estimate_and_stays_wide_without_disagreement() -> None:
    low, high = stats.newcombe_paired_interval(stats.PairTable(1, 1, 7, 12), 0.95)
    assert low < -6 / 21 < high < 0  # significant at 5% in the same direction as the data
    # Ten items that all agree: a bootstrap would give [0, 0]; the score interval does not.
    low, high = stats.newcombe_paired_interval(stats.PairTable(10, 0, 0, 0), 0.95)
    assert low < -0.1 and high > 0.1


def test_exact_conditional_interval_excludes_zero_exactly_when_mcnemar_rejects() -> None:
    for m in range(1, 31):
        for k in range(m + 1):
            table = stats.PairTable(both=5, cand_only=k, base_only=m - k, neither=5)
            low, high = stats.exact_conditional_interval(table, 0.95)
            assert low <= (k - (m - k)) / table.n <= high
            assert (low > 0 or high < 0) == (stats.mcnemar_exact(k, m - k) < 0.05), (k, m)


def test_binary_comparison_never_calls_what_exact_mcnemar_does_not() -> None:
    # Five discordant pairs, all for the candidate: Newcombe's interval excludes 0 but the exact
    # McNemar p is 2 / 32 = 0.0625, so the judged interval must include 0.
    table = stats.PairTable(both=10, cand_only=5, base_only=0, neither=15)
    assert stats.newcombe_paired_interval(table, 0.95)[0] > 0
    cand = [1] * 15 + [0] * 15
    base = [1] * 10 + [0] * 20
    res = stats.compare_binary(cand, base)
    assert res.p_value == pytest.approx(0.0625)
    assert res.ci_low <= 0 < res.ci_high
    # With clear evidence both agree and the interval excludes 0.
    res = stats.compare_binary([1] * 25 + [0] * 5, [1] * 5 + [0] * 25)
    assert res.p_value is not None and res.p_value < 1e-4 and res.ci_low > 0


def test_newcombe_coverage_in_simulation() -> None:
    rng = np.random.default_rng(7)
    n, reps, covered = 60, 400, 0
    # Correlated pass/fail: P(both)=.5, P(cand only)=.2, P(base only)=.1, P(neither)=.2.
    probs = [0.5, 0.2, 0.1, 0.2]
    true = 0.2 - 0.1
    for _ in range(reps):
        counts = rng.multinomial(n, probs)
        low, high = stats.newcombe_paired_interval(stats.PairTable(*map(int, counts)), 0.95)
        covered += low <= true <= high
    assert 0.92 <= covered / reps <= 0.99


def test_paired_bootstrap_covers_true_difference_at_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    reps, covered, true_delta = 300, 0, 0.3
    for i in range(reps):
        base = rng.normal(0.0, 1.0, 50)
        cand = base + rng.normal(true_delta, 0.8, 50)
        res = stats.paired_bootstrap(cand, base, n_resamples=1000, seed=i)
        covered += res.ci_low <= true_delta <= res.ci_high
    assert 0.90 <= covered / reps <= 0.99


def test_pairing_narrows_the_interval() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 80)
    cand = base + 0.1 + rng.normal(0, 0.05, 80)
    paired = stats.paired_bootstrap(cand, base, n_resamples=2000)
    shuffled = stats.paired_bootstrap(cand, rng.permutation(base), n_resamples=2000)
    assert paired.ci_high - paired.ci_low < 0.2 * (shuffled.ci_high - shuffled.ci_low)
    assert paired.ci_low > 0


def test_corpus_perplexity_statistic_is_token_weighted() -> None:
    # Two items: (nll_sum, tokens). Token-weighted: exp(12/12) = e, not mean of per-item ppl.
    values = np.array([[2.0, 2.0], [10.0, 10.0]])
    assert stats.perplexity_statistic(values[None])[0] == pytest.approx(math.e)
    res = stats.paired_bootstrap(values, values, statistic="perplexity", n_resamples=200)
    assert res.delta == 0 and res.ci_low == 0 and res.ci_high == 0


def test_minimum_detectable_difference() -> None:
    # (1.96 + 0.8416) * 1 / sqrt(100) = 0.2802
    assert stats.minimum_detectable_difference(100, sd=1.0) == pytest.approx(0.2802, abs=1e-3)
    # Binary with no disagreement observed: the rule of three keeps it from collapsing to 0.
    assert stats.minimum_detectable_difference(30, diffs=np.zeros(30), binary=True) > 0.1
    assert stats.minimum_detectable_difference(0, sd=1.0) == math.inf


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        stats.compare_binary([0.5, 1], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        stats.paired_bootstrap([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        stats.paired_bootstrap([1.0, 2.0], [1.0])
