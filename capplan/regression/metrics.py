"""Flat names for the figures in a summary.json, shared by thresholds, compare and sweep.

A latency figure is `<stat>_<metric>` (`p95_ttft_ms`, `mean_e2e_ms`); a scalar keeps its own name
(`error_rate`, `requests_per_s`, `output_tokens_per_s`, `goodput_requests_per_s`). Thresholds
spell the same figures as `p95(ttft)`; `metric_name` maps one spelling to the other.
"""

from __future__ import annotations

import re

from capplan.errors import InputError
from capplan.loadtest.metrics import PERCENTILES
from capplan.loadtest.summary_model import LATENCY_BLOCKS, StepSummary
from capplan.units import milliseconds

LATENCY_METRICS = LATENCY_BLOCKS
# The statistics `capplan.loadtest.metrics.stats` writes for every latency.
STATS = (*(f"p{p}" for p in PERCENTILES), "mean", "max", "min")

_METRIC_ALIASES = {
    "ttft": "ttft_ms",
    "tpot": "tpot_ms",
    "itl": "itl_ms",
    "e2e": "e2e_ms",
    "latency": "latency_ms",
    "generator_lag": "generator_lag_ms",
    "lag": "generator_lag_ms",
}
_STAT_ALIASES = {"median": "p50", "avg": "mean", "average": "mean"}
_SCALAR_ALIASES = {
    "errors": "error_rate",
    "error_ratio": "error_rate",
    "rps": "requests_per_s",
    "throughput": "requests_per_s",
    "tokens_per_s": "output_tokens_per_s",
    "tps": "output_tokens_per_s",
    "goodput": "goodput_requests_per_s",
    # The dotted summary.json paths docs/metrics.md uses.
    "throughput.requests_per_s": "requests_per_s",
    "throughput.output_tokens_per_s": "output_tokens_per_s",
    "goodput.requests_per_s": "goodput_requests_per_s",
    "goodput.fraction": "goodput_fraction",
    "requests.total": "total",
    "requests.ok": "ok",
    "requests.failed": "failed",
}
# Every scalar `flatten` can produce: a threshold or limit on another name is a typo.
SCALARS = (
    "error_rate",
    "requests_per_s",
    "output_tokens_per_s",
    "goodput_requests_per_s",
    "goodput_fraction",
    "total",
    "ok",
    "failed",
)
# Scalars where a larger value is better; every other figure is better when smaller.
_HIGHER_IS_BETTER = {
    "requests_per_s",
    "output_tokens_per_s",
    "goodput_requests_per_s",
    "goodput_fraction",
    "ok",
    "total",
}


def canonical_metric(name: str) -> str:
    """`ttft` -> `ttft_ms`; an unknown name raises InputError naming the known ones."""
    key = name.strip().lower()
    key = _METRIC_ALIASES.get(key, key)
    if key not in LATENCY_METRICS:
        raise InputError(
            f"unknown metric '{name}'; use one of {', '.join(LATENCY_METRICS)} "
            "(or ttft, tpot, itl, e2e, latency, generator_lag)"
        )
    return key


def canonical_stat(name: str) -> str:
    key = name.strip().lower()
    key = _STAT_ALIASES.get(key, key)
    if key not in STATS:
        raise InputError(f"unknown statistic '{name}'; use one of {', '.join(STATS)} or median")
    return key


def metric_name(stat: str | None, metric: str) -> str:
    """The flat name of `stat(metric)`, or of a scalar when `stat` is None."""
    if stat is None:
        key = metric.strip().lower()
        key = _SCALAR_ALIASES.get(key, key)
        if key not in SCALARS:
            raise InputError(
                f"unknown figure '{metric}'; use STAT(METRIC) such as p95(ttft) or one of "
                f"{', '.join(SCALARS)} (docs/metrics.md)"
            )
        return key
    return f"{canonical_stat(stat)}_{canonical_metric(metric)}"


_CALL = re.compile(r"([a-z0-9]+)\s*\(\s*([a-z_0-9]+)\s*\)")


def parse_metric(spelled: str) -> str:
    """Any spelling of a figure -> its flat name: `p95(ttft)`, `p95_ttft_ms`, `rps`."""
    key = spelled.strip().lower()
    call = _CALL.fullmatch(key)
    if call:
        return metric_name(call[1], call[2])
    stat, _, rest = key.partition("_")
    if stat in STATS or stat in _STAT_ALIASES:
        return metric_name(stat, rest)
    return metric_name(None, key)


def in_metric_unit(metric: str, number: float, unit: str, expression: str) -> float:
    """NUMBER[UNIT] of a threshold or limit in `metric`'s own unit: a latency in ms (`10s` ->
    10000, no unit: ms), a `%` as a fraction; a time unit on a figure that is no latency is a
    mistake."""
    if unit == "%":
        return number / 100.0
    if unit and not is_latency(metric):
        raise InputError(f"{expression}: '{metric}' is not a latency; drop the '{unit}'")
    return milliseconds(number, unit) if is_latency(metric) else number


def is_latency(name: str) -> bool:
    return name.endswith("_ms")


def higher_is_better(name: str) -> bool:
    return name in _HIGHER_IS_BETTER


def flatten(block: StepSummary) -> dict[str, float]:
    """Every figure a summary step (or a run's whole block) holds, under its flat name."""
    flat: dict[str, float] = {}
    for metric in LATENCY_METRICS:
        stats = block.latency(metric)
        for stat, value in (stats.to_dict() if stats is not None else {}).items():
            if value is not None:
                flat[f"{stat}_{metric}"] = float(value)
    for key, figure in block.throughput.to_dict().items():
        if figure is not None:
            flat[key] = figure
    goodput = block.goodput
    for key, figure in (("requests_per_s", goodput.requests_per_s), ("fraction", goodput.fraction)):
        if figure is not None:
            flat[f"goodput_{key}"] = figure
    requests = block.requests
    for key, number in (
        ("total", requests.total),
        ("ok", requests.ok),
        ("failed", requests.failed),
    ):
        if number is not None:
            flat[key] = float(number)
    if requests.total is not None and requests.failed is not None:
        flat["error_rate"] = requests.failed / requests.total if requests.total else 0.0
    if block.error_rate is not None:
        flat["error_rate"] = block.error_rate
    return flat
