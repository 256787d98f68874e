"""Is the client itself the bottleneck? The figures and limits every engine's self-check shares.

Each engine probes its own loop (`httpx.selfcheck.LoopMonitor`, `locust.selfcheck
.GeventLoopMonitor`); both report these figures against these limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from capplan.loadtest.metrics import stats

PROBE_INTERVAL_S = 0.01
MAX_LOOP_LAG_P99_MS = 10.0
MAX_LOOP_CPU = 0.90  # fraction of one core


def loop_figures(lags_ms: Sequence[float], cpu_fraction: float) -> dict[str, Any]:
    """One step of a client loop (asyncio or gevent): wake-up lag percentiles and CPU share."""
    lag = stats(lags_ms)
    return {
        "loop_lag_ms": {k: lag[k] for k in ("p50", "p99", "max", "count")},
        "loop_cpu_fraction": round(cpu_fraction, 3),
    }
