"""Baseline vs current run: per-metric deltas and a verdict against `--max-regression` limits.

A metric regresses only when its change in the worse direction exceeds its limit *and* a test on
the raw records says the change is not noise: the bootstrap interval of the difference in the
same statistic (p95 vs p95) lies wholly on the worse side of zero (with under 40 requests a side,
a Mann-Whitney U shift of the whole distribution is required as well); for the error rate a
one-sided two-proportion test. Throughput has no per-request sample, so its limit alone decides.
Without records (a bare summary.json) the limit alone decides for every metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from capplan.errors import InputError
from capplan.loadtest.metrics import RequestMetrics
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.summary_model import RunSummary, StepSummary
from capplan.regression.metrics import (
    STATS,
    flatten,
    higher_is_better,
    in_metric_unit,
    parse_metric,
)
from capplan.regression.runs import LoadedRun
from capplan.regression.stats import (
    SAMPLED_METRICS,
    bootstrap_difference,
    mann_whitney_greater,
    measured_metrics,
    metric_values,
    proportion_greater,
)

Verdict = Literal["pass", "regression", "noise", "improved", "info", "missing"]

NO_RECORDS = "skipped: no records"
SMALL_SAMPLE = 40  # per side; below it the bootstrap alone does not decide
DEFAULT_LIMITS = ("p95_ttft_ms=25%", "p95_e2e_ms=25%", "p50_tpot_ms=25%", "error_rate=0.01")
SHOWN_METRICS = (
    "p50_ttft_ms",
    "p95_ttft_ms",
    "p50_tpot_ms",
    "p95_tpot_ms",
    "p50_itl_ms",
    "p95_itl_ms",
    "p50_e2e_ms",
    "p95_e2e_ms",
    "p99_e2e_ms",
    "error_rate",
    "requests_per_s",
    "output_tokens_per_s",
)

_LIMIT = re.compile(
    r"^\s*(?P<metric>[a-z0-9_().]+)\s*=\s*(?P<number>[0-9]*\.?[0-9]+)\s*(?P<unit>%|ms|s)?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Limit:
    """How much worse a metric may get: relative (`10%`) or absolute (`50ms`, `0.01`)."""

    metric: str
    value: float  # a fraction when relative, else in the metric's unit (ms for latency)
    relative: bool
    text: str

    def exceeded(self, baseline: float, worse_by: float) -> bool:
        if self.relative:
            if baseline == 0:
                return worse_by > 0
            return worse_by / abs(baseline) > self.value
        return worse_by > self.value


def parse_limit(text: str) -> Limit:
    match = _LIMIT.match(text)
    if match is None:
        raise InputError(
            f"cannot read limit '{text}'; write e.g. 'p95_e2e_ms=10%', 'p95(ttft)=50ms' "
            "or 'error_rate=0.01'"
        )
    metric = parse_metric(match["metric"])
    value = float(match["number"])
    unit = (match["unit"] or "").lower()
    relative = unit == "%"
    value = in_metric_unit(metric, value, unit, f"limit '{text}'")
    return Limit(metric, value, relative, text.strip())


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    step: str | None
    baseline: float | None
    current: float | None
    limit: Limit | None
    verdict: Verdict
    p_value: float | None = None  # one-sided, current worse than baseline
    ci_low: float | None = None  # bootstrap interval of current - baseline (worse-signed)
    ci_high: float | None = None
    test: str = ""  # which test decided, or why none did

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def delta_pct(self) -> float | None:
        if self.delta is None or not self.baseline:
            return None
        return 100.0 * self.delta / abs(self.baseline)

    @property
    def label(self) -> str:
        return self.metric if self.step is None else f"{self.step}: {self.metric}"


@dataclass(frozen=True)
class Comparison:
    baseline: str
    current: str
    rows: tuple[MetricComparison, ...]
    alpha: float
    warnings: tuple[str, ...] = ()  # invalid runs, different workloads

    @property
    def regressions(self) -> list[MetricComparison]:
        return [r for r in self.rows if r.verdict == "regression"]

    @property
    def passed(self) -> bool:
        return not self.regressions


def compare_runs(
    baseline: LoadedRun,
    current: LoadedRun,
    limit_texts: Sequence[str] = (),
    *,
    alpha: float = 0.05,
    metrics: Iterable[str] = SHOWN_METRICS,
    seed: int = 0,
) -> Comparison:
    """Every shown metric and every limited one, step by step for ladder runs."""
    if not 0 < alpha < 1:
        raise InputError("--alpha must be between 0 and 1, e.g. 0.05")
    limits = [parse_limit(t) for t in (limit_texts or DEFAULT_LIMITS)]
    by_metric = {limit.metric: limit for limit in limits}
    names = list(dict.fromkeys([*metrics, *by_metric]))
    rows: list[MetricComparison] = []
    pairs, step_warnings = _paired_blocks(baseline.summary, current.summary)
    for step, base_block, cur_block in pairs:
        base_flat, cur_flat = flatten(base_block), flatten(cur_block)
        base_sample = _Sample.of(baseline.step_records(step))
        cur_sample = _Sample.of(current.step_records(step))
        for name in names:
            if name not in base_flat and name not in cur_flat and name not in by_metric:
                continue
            rows.append(
                _compare_metric(
                    name,
                    step,
                    base_flat,
                    cur_flat,
                    by_metric.get(name),
                    base_sample,
                    cur_sample,
                    alpha,
                    seed,
                )
            )
    for limit in limits:
        if not any(r.metric == limit.metric and r.baseline is not None for r in rows):
            known = [m for m in SHOWN_METRICS if m in flatten_any(baseline.summary)]
            raise InputError(
                f"limit '{limit.text}': the baseline has no '{limit.metric}'; "
                f"e.g. {', '.join(known) or 'none (no successful request?)'} (docs/ci.md)"
            )
    warnings = tuple([*_warnings(baseline, current), *step_warnings])
    return Comparison(str(baseline.path), str(current.path), tuple(rows), alpha, warnings)


# Config keys that change what is measured; a difference makes the comparison apples to oranges.
_WORKLOAD_KEYS = (
    "endpoint", "stream", "prompt_tokens", "max_tokens", "concurrency", "rate", "arrival",
    "burstiness", "ramp", "requests", "duration_s", "ignore_eos",
)  # fmt: skip


def _warnings(baseline: LoadedRun, current: LoadedRun) -> list[str]:
    out = []
    for name, run in (("baseline", baseline), ("current", current)):
        if not run.summary.valid:
            out.append(f"the {name} run is marked invalid: {'; '.join(run.summary.reasons)}")
        if not run.records:
            out.append(
                f"noise test skipped: the {name} run has no requests.jsonl, so limits alone "
                "decide (pass run directories with their records)"
            )
    differing = baseline.summary.config.differing(current.summary.config, _WORKLOAD_KEYS)
    if differing:
        out.append(f"the runs' workloads differ in: {', '.join(differing)}")
    return out


def flatten_any(summary: RunSummary) -> dict[str, float]:
    """The whole run's figures, and the first ladder step's."""
    return {**flatten(summary.steps[0]), **flatten(summary.whole)}


def _paired_blocks(
    base: RunSummary, cur: RunSummary
) -> tuple[list[tuple[str | None, StepSummary, StepSummary]], list[str]]:
    """(step label, baseline block, current block) pairs, and warnings about unpaired steps.

    Two single-step runs compare whole; otherwise steps pair by label (`concurrency=4`). Every
    baseline step must be in the current run: a step silently dropped would pass unjudged.
    """
    if not base.is_ladder and not cur.is_ladder:
        return [(None, base.whole, cur.whole)], []
    base_steps, cur_steps = base.steps_by_label(), cur.steps_by_label()
    missing = [label for label in base_steps if label not in cur_steps]
    if missing:
        raise InputError(
            f"the current run lacks the baseline's step(s) {', '.join(missing)} "
            f"(baseline: {', '.join(base_steps)}; current: {', '.join(cur_steps) or 'none'}); "
            "run the current one with the baseline's ladder"
        )
    pairs: list[tuple[str | None, StepSummary, StepSummary]] = [
        (label, block, cur_steps[label]) for label, block in base_steps.items()
    ]
    extra = [label for label in cur_steps if label not in base_steps]
    warnings = [f"not compared (no baseline step): {', '.join(extra)}"] if extra else []
    return pairs, warnings


@dataclass(frozen=True)
class _Sample:
    """One run's side of one step, read from its records once for every metric compared."""

    records: int  # warmup included: none at all means no test can run
    measured: int
    failed: int
    metrics: list[RequestMetrics]  # of the successful measured requests

    @classmethod
    def of(cls, records: Sequence[RequestRecord]) -> _Sample:
        measured = [r for r in records if not r.warmup]
        failed = sum(not r.ok for r in measured)
        return cls(len(records), len(measured), failed, measured_metrics(measured))


def _compare_metric(
    name: str,
    step: str | None,
    base_flat: Mapping[str, float],
    cur_flat: Mapping[str, float],
    limit: Limit | None,
    base_sample: _Sample,
    cur_sample: _Sample,
    alpha: float,
    seed: int,
) -> MetricComparison:
    base, cur = base_flat.get(name), cur_flat.get(name)
    if base is None or cur is None or math.isnan(base) or math.isnan(cur):
        return MetricComparison(name, step, base, cur, limit, "missing", test="no figure")
    sign = -1.0 if higher_is_better(name) else 1.0
    worse_by = sign * (cur - base)
    p_value, low, high, test = _significance(name, base_sample, cur_sample, seed)
    if limit is None:
        verdict: Verdict = "info"
    elif limit.exceeded(base, worse_by):
        significant = p_value is None or p_value < alpha
        verdict = "regression" if significant else "noise"
    elif limit.exceeded(base, -worse_by) and p_value is not None and p_value > 1 - alpha:
        verdict = "improved"
    else:
        verdict = "pass"
    return MetricComparison(name, step, base, cur, limit, verdict, p_value, low, high, test)


def _significance(
    name: str, base: _Sample, cur: _Sample, seed: int
) -> tuple[float | None, float | None, float | None, str]:
    """(one-sided p of 'worse', CI low, CI high, test name); p None when no test applies.

    Only latency metrics have a sample, and for all of them higher is worse.
    """
    if not base.records or not cur.records:
        return None, None, None, NO_RECORDS
    if name == "error_rate":
        p = proportion_greater(base.failed, base.measured, cur.failed, cur.measured)
        return p, None, None, "two-proportion z"
    stat, _, metric = name.partition("_")
    if metric not in SAMPLED_METRICS or stat not in STATS:
        return None, None, None, "none: no per-request sample"
    x = metric_values(base.metrics, metric)
    y = metric_values(cur.metrics, metric)
    if len(x) < 5 or len(y) < 5:
        return None, None, None, "skipped: under 5 samples"
    if stat in ("max", "min"):
        test = mann_whitney_greater(x, y)
        return test.p_value, None, None, "Mann-Whitney U"
    ci = bootstrap_difference(x, y, stat, seed=seed)
    if min(len(x), len(y)) >= SMALL_SAMPLE:
        return ci.p_greater, ci.low, ci.high, f"bootstrap {stat} ({ci.confidence:.0%} CI)"
    # A bootstrap of a tail percentile from a few requests is overconfident (it resamples the
    # same handful of extremes); small samples must also show a shift of the whole distribution.
    shift = mann_whitney_greater(x, y)
    return (
        max(ci.p_greater, shift.p_value),
        ci.low,
        ci.high,
        f"bootstrap {stat} and Mann-Whitney U (n<{SMALL_SAMPLE})",
    )
