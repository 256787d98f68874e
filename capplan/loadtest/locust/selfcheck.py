"""Is a Locust process itself the bottleneck? The gevent twin of `selfcheck.LoopMonitor`.

Every timestamp a worker takes is late by however long its gevent hub was busy elsewhere; a
probe greenlet sleeps a fixed interval and records how late it wakes. A Locust process does
nothing but generate load, so its whole CPU time is the client's. Same thresholds as the httpx
engine's self-check; the worst worker decides.
"""

from __future__ import annotations

import time
from typing import Any

import gevent

from capplan.loadtest.selfcheck import (
    MAX_LOOP_CPU,
    MAX_LOOP_LAG_P99_MS,
    PROBE_INTERVAL_S,
    loop_figures,
)


class GeventLoopMonitor:
    """Hub lag and this process's CPU, from `start()` to `stop()` (one step)."""

    def __init__(self, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lags_ms: list[float] = []
        self._probe: gevent.Greenlet[Any, Any] | None = None
        self._cpu0 = 0.0
        self._wall0 = 0.0

    def start(self) -> None:
        self.stop()
        self._lags_ms = []
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        self._probe = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            gevent.sleep(self.interval_s)
            self._lags_ms.append(max(0.0, (time.perf_counter() - t0 - self.interval_s) * 1000))

    def stop(self) -> dict[str, Any]:
        if self._probe is None:
            return {}
        self._probe.kill(block=False)
        self._probe = None
        wall = time.perf_counter() - self._wall0
        cpu = (time.process_time() - self._cpu0) / wall if wall > 0 else 0.0
        return loop_figures(self._lags_ms, cpu)


def client_check(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One step's client self-check from every worker's: the worst worker decides."""
    reasons: list[str] = []
    for worker, report in sorted(reports.items()):
        p99 = report.get("loop_lag_ms", {}).get("p99")
        if isinstance(p99, float) and p99 > MAX_LOOP_LAG_P99_MS:
            reasons.append(
                f"Locust worker {worker} lagged (gevent hub p99 {p99:.1f} ms > "
                f"{MAX_LOOP_LAG_P99_MS:g} ms): timestamps are late, add workers"
            )
        cpu = report.get("loop_cpu_fraction", 0.0)
        if cpu > MAX_LOOP_CPU:
            reasons.append(
                f"Locust worker {worker} used {cpu:.0%} of a core (> {MAX_LOOP_CPU:.0%}): "
                "client-bound, add workers"
            )
    return {"workers": reports, "client_bound": bool(reasons), "reasons": reasons}
