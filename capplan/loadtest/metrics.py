"""Per-request latency figures and the percentile statistics over them (docs/metrics.md).

- TTFT = first content token - send
- E2E = end - send
- TPOT = (E2E - TTFT) / (output tokens - 1), for requests with at least 2 output tokens
- ITL = every gap between consecutive content chunks (a distribution over all chunks)
- latency = end - intended start (open loop: includes time the request waited to be sent)
- generator lag = send - intended start (open loop: how far the client fell behind schedule)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from capplan.loadtest.record import RequestRecord

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class RequestMetrics:
    e2e_ms: float
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    latency_ms: float | None = None
    generator_lag_ms: float | None = None


def request_metrics(record: RequestRecord) -> RequestMetrics:
    e2e = (record.end - record.send) * 1000.0
    ttft = None
    tpot = None
    if record.first_token is not None:
        ttft = (record.first_token - record.send) * 1000.0
        if record.output_tokens >= 2:
            tpot = (e2e - ttft) / (record.output_tokens - 1)
    times = record.chunk_times
    itl = [(b - a) * 1000.0 for a, b in itertools.pairwise(times)]
    latency = lag = None
    if record.intended_start is not None:
        latency = (record.end - record.intended_start) * 1000.0
        lag = max(0.0, (record.send - record.intended_start) * 1000.0)
    return RequestMetrics(e2e, ttft, tpot, itl, latency, lag)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted input."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def stats(values: Iterable[float]) -> dict[str, float | int | None]:
    """{p50, p90, p95, p99, mean, max, min, count}; figures are None when there is no value."""
    data = sorted(v for v in values if v is not None and math.isfinite(v))
    if not data:
        empty: dict[str, float | int | None] = {f"p{p}": None for p in PERCENTILES}
        empty.update(mean=None, max=None, min=None, count=0)
        return empty
    block: dict[str, float | int | None] = {
        f"p{p}": round(percentile(data, p), 3) for p in PERCENTILES
    }
    block.update(
        mean=round(sum(data) / len(data), 3),
        max=round(data[-1], 3),
        min=round(data[0], 3),
        count=len(data),
    )
    return block
