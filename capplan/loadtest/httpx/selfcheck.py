"""The httpx engine's self-check: asyncio event-loop lag and the loop thread's CPU, per step.

Every timestamp the engine takes is late by however long the event loop was busy elsewhere, so a
busy loop inflates TTFT and ITL. A probe sleeps a fixed interval and records how late it wakes;
the loop thread's CPU time (not the process's: a test server or the telemetry sampler may share
the process) says whether the client was saturated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from capplan.loadtest.selfcheck import (
    MAX_LOOP_CPU,
    MAX_LOOP_LAG_P99_MS,
    PROBE_INTERVAL_S,
    loop_figures,
)


class LoopMonitor:
    """Runs inside the engine's event loop; `step_report()` closes one step's figures."""

    def __init__(self, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu0 = 0.0
        self._wall0 = 0.0

    async def _probe(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self._lags_ms.append(max(0.0, (time.perf_counter() - t0 - self.interval_s) * 1000))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._probe())
        self.begin_step()

    def begin_step(self) -> None:
        self._lags_ms = []
        self._cpu0 = time.thread_time()
        self._wall0 = time.perf_counter()

    def step_report(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall0
        cpu = (time.thread_time() - self._cpu0) / wall if wall > 0 else 0.0
        figures = loop_figures(self._lags_ms, cpu)
        reasons = []
        p99 = figures["loop_lag_ms"]["p99"]
        if isinstance(p99, float) and p99 > MAX_LOOP_LAG_P99_MS:
            reasons.append(
                f"client event loop lagged (p99 {p99:.1f} ms > {MAX_LOOP_LAG_P99_MS:g} ms): "
                "timestamps are late, the client may be the bottleneck"
            )
        if cpu > MAX_LOOP_CPU:
            reasons.append(
                f"client loop used {cpu:.0%} of a core (> {MAX_LOOP_CPU:.0%}): client-bound"
            )
        return {**figures, "client_bound": bool(reasons), "reasons": reasons}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
