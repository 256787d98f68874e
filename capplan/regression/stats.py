"""Statistical tests on raw request records, so that noise alone is not called a regression.

Two complementary checks between a baseline and a current sample of one per-request figure:
a one-sided Mann-Whitney U test (is the current distribution shifted towards worse?) and a
percentile bootstrap confidence interval of the difference in the statistic being compared
(p95 of the current minus p95 of the baseline). Both are numpy only; the normal approximation
of U with a tie correction is accurate for the sample sizes a load test produces (n >= 8).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from capplan.loadtest.metrics import RequestMetrics, request_metrics
from capplan.loadtest.record import RequestRecord

# Per-request figures that have a sample behind them; the names match `metrics.LATENCY_METRICS`.
SAMPLED_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "latency_ms")


def per_request_values(records: Iterable[RequestRecord], metric: str) -> np.ndarray:
    """The sample behind one latency metric (docs/metrics.md): successful, non-warmup requests.

    ITL pools every gap between content chunks; the other metrics give one value per request.
    """
    return metric_values(measured_metrics(records), metric)


def measured_metrics(records: Iterable[RequestRecord]) -> list[RequestMetrics]:
    """Per-request figures of the successful, non-warmup requests: computed once, then read
    for every metric with `metric_values`."""
    return [request_metrics(r) for r in records if not r.warmup and r.ok]


def metric_values(metrics: Iterable[RequestMetrics], metric: str) -> np.ndarray:
    values: list[float] = []
    for m in metrics:
        if metric == "itl_ms":
            values.extend(m.itl_ms)
            continue
        value = getattr(m, metric, None)
        if isinstance(value, float):
            values.append(value)
    return np.asarray(values, dtype=float)


@dataclass(frozen=True)
class ShiftTest:
    """Mann-Whitney U: is `current` stochastically larger (worse, for latency) than `baseline`?"""

    u: float
    p_value: float  # one-sided
    effect: float  # common-language effect size: P(current > baseline) + P(tie)/2
    n_baseline: int
    n_current: int


def mann_whitney_greater(baseline: ArrayLike, current: ArrayLike) -> ShiftTest:
    """One-sided test of H1: current tends to exceed baseline (normal approximation, ties)."""
    x = np.asarray(current, dtype=float)
    y = np.asarray(baseline, dtype=float)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return ShiftTest(u=math.nan, p_value=1.0, effect=math.nan, n_baseline=n2, n_current=n1)
    combined = np.concatenate([x, y])
    ranks = _average_ranks(combined)
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    mean_u = n1 * n2 / 2.0
    _, counts = np.unique(combined, return_counts=True)
    n = n1 + n2
    tie_term = float(((counts.astype(float) ** 3) - counts).sum()) / (n * (n - 1)) if n > 1 else 0.0
    var_u = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var_u <= 0:
        p = 0.5
    else:
        z = (u - mean_u - 0.5) / math.sqrt(var_u)  # continuity correction towards the null
        p = 0.5 * math.erfc(z / math.sqrt(2.0))
    return ShiftTest(u=u, p_value=p, effect=u / (n1 * n2), n_baseline=n2, n_current=n1)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    return np.asarray(average[inverse], dtype=float)


@dataclass(frozen=True)
class BootstrapInterval:
    """Confidence interval of statistic(current) - statistic(baseline)."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int
    p_greater: float  # one-sided bootstrap p of "current exceeds baseline": share of diffs <= 0


def statistic(values: np.ndarray, stat: str) -> float:
    """`p50`..`p99`, `mean`, `max`, `min` of a sample (linear-interpolated percentiles)."""
    if len(values) == 0:
        return math.nan
    if stat == "mean":
        return float(values.mean())
    if stat == "max":
        return float(values.max())
    if stat == "min":
        return float(values.min())
    return float(np.percentile(values, float(stat.lstrip("p"))))


def bootstrap_difference(
    baseline: ArrayLike,
    current: ArrayLike,
    stat: str,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile bootstrap of stat(current) - stat(baseline), each sample resampled alone."""
    x = np.asarray(current, dtype=float)
    y = np.asarray(baseline, dtype=float)
    if len(x) == 0 or len(y) == 0:
        return BootstrapInterval(math.nan, math.nan, math.nan, confidence, 0, 1.0)
    rng = np.random.default_rng(seed)
    diffs = _resampled_statistic(x, stat, resamples, rng) - _resampled_statistic(
        y, stat, resamples, rng
    )
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    estimate = statistic(x, stat) - statistic(y, stat)
    p_greater = float((np.count_nonzero(diffs <= 0) + 1) / (resamples + 1))
    return BootstrapInterval(estimate, float(low), float(high), confidence, resamples, p_greater)


def _resampled_statistic(
    values: np.ndarray, stat: str, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    out = np.empty(resamples, dtype=float)
    # Chunks keep memory bounded (resamples x n floats) for long runs with many ITL gaps.
    chunk = max(1, min(resamples, 2_000_000 // max(1, len(values))))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        sample = values[idx]
        if stat == "mean":
            out[start:stop] = sample.mean(axis=1)
        elif stat == "max":
            out[start:stop] = sample.max(axis=1)
        elif stat == "min":
            out[start:stop] = sample.min(axis=1)
        else:
            out[start:stop] = np.percentile(sample, float(stat.lstrip("p")), axis=1)
    return out


def proportion_greater(
    failed_baseline: int, total_baseline: int, failed_current: int, total_current: int
) -> float:
    """One-sided p-value that the current failure proportion exceeds the baseline's (pooled z)."""
    if total_baseline == 0 or total_current == 0:
        return 1.0
    p1 = failed_current / total_current
    p0 = failed_baseline / total_baseline
    pooled = (failed_baseline + failed_current) / (total_baseline + total_current)
    var = pooled * (1.0 - pooled) * (1.0 / total_baseline + 1.0 / total_current)
    if var <= 0:
        return 0.0 if p1 > p0 else 1.0
    z = (p1 - p0) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))
