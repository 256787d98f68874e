"""Host readings from psutil: the machine's CPU and memory, and this (client) process's share.

The client's CPU tells whether the load generator itself was the bottleneck; the host's tells
whether something else on the machine (a locally launched server, other jobs) competed with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

_MIB = 1024 * 1024
MIN_CPU_WINDOW_S = 0.05

HOST_COLUMNS = (
    "host_cpu_pct",
    "host_mem_used_mib",
    "host_mem_total_mib",
    "client_cpu_pct",
    "client_rss_mib",
)


class HostSource:
    """CPU % are averages since the previous `sample()` (psutil's non-blocking form)."""

    name = "host"

    def __init__(
        self, pid: int | None = None, *, now: Callable[[], float] = time.monotonic
    ) -> None:
        self._pid = pid
        self._now = now
        self._psutil: Any = None
        self._process: Any = None
        self.error: str | None = None
        self._last_cpu = 0.0

    @property
    def available(self) -> bool:
        return self._psutil is not None

    def open(self) -> bool:
        try:
            import psutil
        except ImportError:
            self.error = "psutil not installed"
            return False
        self._psutil = psutil
        self._process = psutil.Process(self._pid)
        # The first non-blocking call only sets the baseline; prime it so sample one is real.
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)
        self._last_cpu = self._now()
        return True

    def columns(self) -> list[str]:
        return list(HOST_COLUMNS)

    def sample(self, t: float) -> dict[str, object]:
        if self._psutil is None:
            return {}
        memory = self._psutil.virtual_memory()
        row: dict[str, object] = {
            "host_mem_used_mib": round((memory.total - memory.available) / _MIB, 1),
            "host_mem_total_mib": round(memory.total / _MIB, 1),
        }
        # A CPU share over a few milliseconds (the first row, right after open) is 0 or 100 %
        # by chance: leave it blank rather than plot noise.
        now = self._now()
        measured = now - self._last_cpu >= MIN_CPU_WINDOW_S
        host_cpu = self._psutil.cpu_percent(interval=None)
        if measured:
            row["host_cpu_pct"] = host_cpu
        try:
            client_cpu = self._process.cpu_percent(interval=None)
            if measured:
                row["client_cpu_pct"] = client_cpu
            row["client_rss_mib"] = round(self._process.memory_info().rss / _MIB, 1)
        except self._psutil.Error:
            pass
        self._last_cpu = now
        return row

    def close(self) -> None:
        self._process = None
