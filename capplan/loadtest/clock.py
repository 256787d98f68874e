"""One clock for requests and telemetry.

Times in records are float seconds since the Unix epoch, read as an epoch anchor plus
`perf_counter` deltas: monotonic and sub-microsecond within a process, and comparable across
processes on the same machine (Locust workers, the NVML sampler thread).
"""

from __future__ import annotations

import time


class RunClock:
    """Epoch seconds with perf_counter resolution."""

    def __init__(self) -> None:
        self._epoch0 = time.time()
        self._perf0 = time.perf_counter()

    def now(self) -> float:
        return self._epoch0 + (time.perf_counter() - self._perf0)
