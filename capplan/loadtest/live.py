"""Rolling figures for the live progress line: counts, recent percentiles, recent tokens/s."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from capplan.loadtest.metrics import percentile
from capplan.loadtest.record import RequestRecord

ROLLING_REQUESTS = 200
TOKENS_WINDOW_S = 5.0


@dataclass(frozen=True)
class ProgressSnapshot:
    elapsed_s: float
    step: str
    step_index: int
    steps: int
    sent: int
    finished: int
    failed: int
    in_flight: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    e2e_p50_ms: float | None
    e2e_p95_ms: float | None
    output_tokens_per_s: float
    telemetry: dict[str, Any] = field(default_factory=dict)  # the sampler's latest() sample


class LiveStats:
    """Updated by the engine's callbacks in the event loop; read by the progress renderer."""

    def __init__(self, start: float, steps: int) -> None:
        self.start = start
        self.steps = steps
        self.step = ""
        self.step_index = 0
        self.sent = 0
        self.finished = 0
        self.failed = 0
        self._ttft: deque[float] = deque(maxlen=ROLLING_REQUESTS)
        self._e2e: deque[float] = deque(maxlen=ROLLING_REQUESTS)
        self._tokens: deque[tuple[float, int]] = deque()

    def begin_step(self, label: str, index: int) -> None:
        self.step = label
        self.step_index = index

    def on_send(self) -> None:
        self.sent += 1

    def on_record(self, record: RequestRecord) -> None:
        self.finished += 1
        if not record.ok:
            self.failed += 1
            return
        if record.first_token is not None:
            self._ttft.append((record.first_token - record.send) * 1000)
        self._e2e.append((record.end - record.send) * 1000)
        self._tokens.append((record.end, record.output_tokens))

    def snapshot(self, now: float, telemetry: dict[str, Any] | None = None) -> ProgressSnapshot:
        while self._tokens and self._tokens[0][0] < now - TOKENS_WINDOW_S:
            self._tokens.popleft()
        window = min(TOKENS_WINDOW_S, max(now - self.start, 1e-9))
        ttft = sorted(self._ttft)
        e2e = sorted(self._e2e)
        return ProgressSnapshot(
            elapsed_s=now - self.start,
            step=self.step,
            step_index=self.step_index,
            steps=self.steps,
            sent=self.sent,
            finished=self.finished,
            failed=self.failed,
            in_flight=self.sent - self.finished,
            ttft_p50_ms=percentile(ttft, 50) if ttft else None,
            ttft_p95_ms=percentile(ttft, 95) if ttft else None,
            e2e_p50_ms=percentile(e2e, 50) if e2e else None,
            e2e_p95_ms=percentile(e2e, 95) if e2e else None,
            output_tokens_per_s=sum(n for _, n in self._tokens) / window,
            telemetry=dict(telemetry or {}),
        )
