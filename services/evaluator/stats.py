"""Paired statistics for candidate-vs-baseline comparisons on the same items.

Two kinds of metric, two methods:

* **pass/fail items** (exact match, JSON validity, accuracy): the exact McNemar test for "no
  difference" and Newcombe's hybrid score interval (method 10, Newcombe 1998, Stat Med 17:2635) for
  the paired difference of proportions. Newcombe's interval keeps a sensible width when few or no
  pairs disagree, where a bootstrap collapses to a zero-width interval and claims certainty.
* **continuous per-item values** (token F1, ROUGE, NLL): a paired percentile bootstrap that resamples
  items, so corpus-level statistics (token-weighted perplexity, corpus BLEU) are resampled from
  their per-item sufficient statistics instead of being averaged per item.

Differences are always ``candidate - baseline`` on the raw scale; the gate orients them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

FloatArray = NDArray[np.float64]
# Maps per-item values of a resample, shape (B, n, k), to one statistic per resample, shape (B,).
Statistic = Callable[[FloatArray], FloatArray]

DEFAULT_POWER = 0.8


def mean_statistic(values: FloatArray) -> FloatArray:
    return np.asarray(values[..., 0].mean(axis=-1), dtype=np.float64)


def ratio_statistic(values: FloatArray) -> FloatArray:
    """``sum(col0) / sum(col1)``: token-weighted mean NLL, bits per byte before scaling."""
    num = values[..., 0].sum(axis=-1)
    den = values[..., 1].sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num / den, dtype=np.float64)


def perplexity_statistic(values: FloatArray) -> FloatArray:
    """Token-weighted corpus perplexity from per-item ``(nll_sum, n_tokens)``."""
    return np.asarray(np.exp(ratio_statistic(values)), dtype=np.float64)


def bits_per_byte_statistic(values: FloatArray) -> FloatArray:
    """Corpus bits per byte from per-item ``(nll_sum_nats, n_bytes)``."""
    return np.asarray(ratio_statistic(values) / math.log(2), dtype=np.float64)


def max_statistic(values: FloatArray) -> FloatArray:
    return np.asarray(values[..., 0].max(axis=-1), dtype=np.float64)


STATISTICS: dict[str, Statistic] = {
    "mean": mean_statistic,
    "max": max_statistic,
    "ratio": ratio_statistic,
    "perplexity": perplexity_statistic,
    "bits_per_byte": bits_per_byte_statistic,
}


def register_statistic(name: str, fn: Statistic) -> None:
    """Add a corpus statistic (e.g. BLEU from summed n-gram counts) usable by name."""
    STATISTICS[name] = fn


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison. ``delta = candidate - baseline`` on the metric's own scale."""

    method: Literal["bootstrap", "newcombe+exact McNemar"]
    n: int
    confidence: float
    candidate: float
    baseline: float
    delta: float
    ci_low: float
    ci_high: float
    mdd: float
    p_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) for k, v in asdict(self).items()}


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


# --------------------------------------------------------------------------------------------
# pass/fail pairs


@dataclass(frozen=True)
class PairTable:
    """2x2 table of paired outcomes: ``both``, ``cand_only``, ``base_only``, ``neither`` pass."""

    both: int
    cand_only: int
    base_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.cand_only + self.base_only + self.neither

    @classmethod
    def from_outcomes(cls, candidate: ArrayLike, baseline: ArrayLike) -> PairTable:
        c = _as_binary(candidate, "candidate")
        b = _as_binary(baseline, "baseline")
        if c.shape != b.shape:
            raise ValueError(f"paired outcomes differ in length: {c.size} vs {b.size}")
        return cls(
            both=int(np.sum(c & b)),
            cand_only=int(np.sum(c & ~b)),
            base_only=int(np.sum(~c & b)),
            neither=int(np.sum(~c & ~b)),
        )


def _as_binary(values: ArrayLike, what: str) -> NDArray[np.bool_]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.all((arr == 0.0) | (arr == 1.0)):
        raise ValueError(f"{what} outcomes must be 0 or 1 for a pass/fail comparison")
    return arr.astype(bool)


def mcnemar_exact(cand_only: int, base_only: int) -> float:
    """Two-sided exact (conditional binomial) McNemar p-value for the discordant counts."""
    m = cand_only + base_only
    if m == 0:
        return 1.0
    p = 2.0 * float(sps.binom.cdf(min(cand_only, base_only), m, 0.5))
    return min(1.0, p)


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired_interval(table: PairTable, confidence: float) -> tuple[float, float]:
    """Newcombe's method 10 interval for ``p_candidate - p_baseline`` from paired outcomes."""
    n = table.n
    if n == 0:
        return -1.0, 1.0
    a, b, c, d = table.both, table.cand_only, table.base_only, table.neither
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0 if denom == 0 else (a * d - b * c) / math.sqrt(denom)
    delta = p1 - p2
    lower_sq = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    upper_sq = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    low = delta - math.sqrt(max(lower_sq, 0.0))
    high = delta + math.sqrt(max(upper_sq, 0.0))
    return max(-1.0, low), min(1.0, high)


def exact_conditional_interval(table: PairTable, confidence: float) -> tuple[float, float]:
    """Interval for ``p_candidate - p_baseline`` that inverts the exact McNemar test.

    Given the discordant pairs ``m = cand_only + base_only``, ``cand_only`` is binomial with
    share ``pi``; Clopper-Pearson bounds on ``pi`` map to ``(m / n) * (2 * pi - 1)``. It excludes 0
    exactly when the two-sided exact McNemar p-value is below ``1 - confidence``; it holds the
    discordant share at its observed value, so alone it is too narrow away from 0.
    """
    _z(confidence)  # validates
    n, m = table.n, table.cand_only + table.base_only
    if n == 0:
        return -1.0, 1.0
    if m == 0:
        return 0.0, 0.0
    alpha = 1.0 - confidence
    k = table.cand_only
    pi_low = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, m - k + 1))
    pi_high = 1.0 if k == m else float(sps.beta.ppf(1 - alpha / 2, k + 1, m - k))
    return (m / n) * (2 * pi_low - 1), (m / n) * (2 * pi_high - 1)


def compare_binary(
    candidate: ArrayLike, baseline: ArrayLike, *, confidence: float = 0.95, power: float = 0.8
) -> PairedResult:
    """Paired pass/fail comparison.

    The interval the gate judges is the union of Newcombe's score interval (good coverage for any
    margin) and the exact conditional interval (the inversion of exact McNemar): a decision is
    only taken when both agree, so the gate never calls a difference that exact McNemar does not.
    """
    table = PairTable.from_outcomes(candidate, baseline)
    n = table.n
    if n == 0:
        raise ValueError("no paired items to compare")
    n_low, n_high = newcombe_paired_interval(table, confidence)
    e_low, e_high = exact_conditional_interval(table, confidence)
    low, high = min(n_low, e_low), max(n_high, e_high)
    diffs = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    return PairedResult(
        method="newcombe+exact McNemar",
        n=n,
        confidence=confidence,
        candidate=(table.both + table.cand_only) / n,
        baseline=(table.both + table.base_only) / n,
        delta=(table.cand_only - table.base_only) / n,
        ci_low=low,
        ci_high=high,
        mdd=minimum_detectable_difference(
            n, diffs=diffs, binary=True, confidence=confidence, power=power
        ),
        p_value=mcnemar_exact(table.cand_only, table.base_only),
        details={
            "test": "exact McNemar (two-sided)",
            "interval": "union of Newcombe hybrid score (10) and exact conditional "
            "(Clopper-Pearson on the discordant pairs)",
            "newcombe": [n_low, n_high],
            "exact_conditional": [e_low, e_high],
            **asdict(table),
        },
    )


# --------------------------------------------------------------------------------------------
# continuous values


def _as_matrix(values: ArrayLike, what: str) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{what} values must be a vector or an (items x k) matrix")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} values contain NaN or infinity")
    return arr


def paired_bootstrap(
    candidate: ArrayLike,
    baseline: ArrayLike,
    *,
    statistic: str | Statistic = "mean",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    power: float = DEFAULT_POWER,
    chunk: int = 1000,
) -> PairedResult:
    """Paired percentile bootstrap CI of ``statistic(candidate) - statistic(baseline)``.

    The same resampled item indices are applied to both subjects, which is what makes it paired.
    """
    cand = _as_matrix(candidate, "candidate")
    base = _as_matrix(baseline, "baseline")
    if cand.shape != base.shape:
        raise ValueError(f"paired values differ in shape: {cand.shape} vs {base.shape}")
    n = cand.shape[0]
    if n == 0:
        raise ValueError("no paired items to compare")
    fn = STATISTICS[statistic] if isinstance(statistic, str) else statistic
    stat_name = statistic if isinstance(statistic, str) else getattr(fn, "__name__", "custom")
    point_c = float(fn(cand[None])[0])
    point_b = float(fn(base[None])[0])
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        deltas[start : start + size] = fn(cand[idx]) - fn(base[idx])
    alpha = 1.0 - confidence
    finite = deltas[np.isfinite(deltas)]
    if finite.size < n_resamples * 0.99:
        low, high = -math.inf, math.inf
    else:
        low, high = (float(x) for x in np.quantile(finite, [alpha / 2, 1 - alpha / 2]))
    # The bootstrap SD of the statistic's difference is the natural per-n noise scale for the MDD.
    se = float(np.std(finite, ddof=1)) if finite.size > 1 else math.inf
    mdd = (_z(confidence) + float(sps.norm.ppf(power))) * se
    return PairedResult(
        method="bootstrap",
        n=n,
        confidence=confidence,
        candidate=point_c,
        baseline=point_b,
        delta=point_c - point_b,
        ci_low=low,
        ci_high=high,
        mdd=mdd,
        details={
            "statistic": stat_name,
            "n_resamples": n_resamples,
            "seed": seed,
            "interval": "percentile",
            "bootstrap_se": se,
        },
    )


def bootstrap_interval(
    values: ArrayLike,
    *,
    statistic: str | Statistic = "mean",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(point, low, high)``: one subject's statistic with a percentile bootstrap interval."""
    arr = _as_matrix(values, "metric")
    n = arr.shape[0]
    if n == 0:
        raise ValueError("no items")
    fn = STATISTICS[statistic] if isinstance(statistic, str) else statistic
    point = float(fn(arr[None])[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    boots = fn(arr[idx])
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return point, math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)


def minimum_detectable_difference(
    n: int,
    *,
    diffs: ArrayLike | None = None,
    sd: float | None = None,
    binary: bool = False,
    confidence: float = 0.95,
    power: float = DEFAULT_POWER,
) -> float:
    """Smallest true paired difference detected with ``power`` at a two-sided ``confidence``.

    ``MDD = (z_{1-alpha/2} + z_power) * sd(d) / sqrt(n)`` with ``d`` the per-item differences. For
    pass/fail items with no disagreement observed, ``sd(d)`` is taken from the rule-of-three bound
    on the discordance rate (``3/n``), so a small sample never reports a falsely tiny MDD.
    """
    if n <= 0:
        return math.inf
    if sd is None:
        if diffs is None:
            raise ValueError("give per-item differences or their standard deviation")
        d = np.asarray(diffs, dtype=np.float64).ravel()
        sd = float(np.std(d, ddof=1)) if d.size > 1 else math.inf
        if binary:
            disc = float(np.mean(d != 0)) if d.size else 0.0
            sd = max(sd, math.sqrt(min(1.0, max(disc, 3.0 / n))))
    return (_z(confidence) + float(sps.norm.ppf(power))) * sd / math.sqrt(n)


def compare(
    candidate: ArrayLike,
    baseline: ArrayLike,
    *,
    kind: Literal["binary", "continuous"],
    statistic: str | Statistic = "mean",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedResult:
    if kind == "binary":
        return compare_binary(candidate, baseline, confidence=confidence)
    return paired_bootstrap(
        candidate,
        baseline,
        statistic=statistic,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
