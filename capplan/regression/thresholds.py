"""Pass/fail thresholds on a run's summary: `p95(ttft_ms)<500`, `error_rate<1%`, `p95(e2e)<10s`.

Grammar: `STAT(METRIC) OP NUMBER[UNIT]` or `SCALAR OP NUMBER[UNIT]`, OP one of `< <= > >=`.
Latency limits are in ms unless written with `s`; a rate such as `error_rate` takes a plain
fraction or a `%`. The same expressions are the SLOs of `capplan sweep` and `capplan plan`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from capplan.errors import InputError
from capplan.loadtest.summary_model import RunSummary, StepSummary
from capplan.regression.metrics import flatten, in_metric_unit, is_latency, parse_metric

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_PATTERN = re.compile(
    r"""^\s*
    (?P<metric>[a-z0-9]+\s*\(\s*[a-z_0-9]+\s*\)|[a-z_][a-z_0-9.]*)
    \s*(?P<op><=|>=|<|>)\s*
    (?P<number>[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)
    \s*(?P<unit>ms|s|%)?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


@dataclass(frozen=True)
class Threshold:
    """One parsed expression; `limit` is in the metric's own unit (ms, fraction, per second)."""

    expression: str
    metric: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.limit)


@dataclass(frozen=True)
class ThresholdResult:
    threshold: Threshold
    actual: float | None  # None when the summary has no such figure (e.g. no successful request)
    passed: bool
    step: str | None = None  # ladder step label when evaluated per step

    @property
    def expression(self) -> str:
        return self.threshold.expression

    def to_dict(self) -> dict[str, Any]:
        return {
            "expression": self.threshold.expression,
            "metric": self.threshold.metric,
            "op": self.threshold.op,
            "limit": self.threshold.limit,
            "actual": self.actual,
            "passed": self.passed,
            "step": self.step,
        }


def parse_threshold(text: str) -> Threshold:
    match = _PATTERN.match(text)
    if match is None:
        raise InputError(
            f"cannot read threshold '{text}'; write e.g. 'p95(ttft_ms)<500', 'p95(e2e)<10s' "
            "or 'error_rate<1%'"
        )
    metric = parse_metric(match["metric"])
    unit = (match["unit"] or "").lower()
    if is_latency(metric) and unit == "%":
        raise InputError(f"threshold '{text}': a latency takes ms or s, not %")
    limit = in_metric_unit(metric, float(match["number"]), unit, f"threshold '{text}'")
    return Threshold(expression=text.strip(), metric=metric, op=match["op"], limit=limit)


def parse_thresholds(texts: Iterable[str]) -> list[Threshold]:
    return [parse_threshold(t) for t in texts]


def evaluate_thresholds(
    block: StepSummary, thresholds: Iterable[Threshold], *, step: str | None = None
) -> list[ThresholdResult]:
    """Judges thresholds against one summary block (a single-step run's, or one ladder step)."""
    flat = flatten(block)
    results = []
    for threshold in thresholds:
        actual = flat.get(threshold.metric)
        passed = actual is not None and threshold.holds(actual)
        results.append(ThresholdResult(threshold, actual, passed, step))
    return results


def evaluate(summary: RunSummary, expressions: Iterable[str]) -> list[ThresholdResult]:
    """Judges each expression against a run's summary.

    A ladder is judged step by step, each result labelled with its step; a figure the summary
    lacks fails its threshold, never passes silently.
    """
    thresholds = parse_thresholds(expressions)
    if summary.is_ladder:
        return [
            result
            for step in summary.steps
            for result in evaluate_thresholds(step, thresholds, step=step.step)
        ]
    return evaluate_thresholds(summary.whole, thresholds)


def all_passed(results: Iterable[ThresholdResult]) -> bool:
    return all(r.passed for r in results)
