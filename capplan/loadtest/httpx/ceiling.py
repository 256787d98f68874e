"""The client's own ceiling: how much load it can generate before its figures go wrong.

Against an emulated server with exact timing, two figures:
- non-streamed requests/s with a one-token answer (the client's per-request cost);
- concurrent streams held while the median TTFT error stays under 2 ms, where the error is the
  measured TTFT minus the configured TTFT, less the fixed offset measured at concurrency 1
  (the server's routing and the HTTP round trip, which are not the client's error).
Used by `capplan selftest` and benchmarks/client_ceiling.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from capplan.loadtest.clock import RunClock
from capplan.loadtest.httpx.engine import ClientPool, StepPlan, StopFlag, run_closed_step
from capplan.loadtest.httpx.selfcheck import LoopMonitor
from capplan.loadtest.metrics import percentile
from capplan.loadtest.prompts import PromptSpec
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.request import Target
from capplan.loadtest.window import WindowPlan

MAX_TTFT_ERROR_MS = 2.0
PROMPT = PromptSpec(prompt="ping " * 16, max_tokens=1, prompt_tokens=None)


@dataclass(frozen=True)
class StreamLevel:
    concurrency: int
    requests: int
    failed: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    error_p50_ms: float  # measured - configured - offset at concurrency 1
    error_p99_ms: float
    loop_lag_p99_ms: float
    loop_cpu_fraction: float


@dataclass
class CeilingResult:
    requests_per_s: float = 0.0
    requests_loop_cpu_fraction: float = 0.0
    ttft_ms: float = 0.0
    tpot_ms: float = 0.0
    offset_ms: float = 0.0
    streams: list[StreamLevel] = field(default_factory=list)

    @property
    def streams_held(self) -> int:
        """The largest concurrency whose median TTFT error stayed under 2 ms, all answered."""
        held = [
            s.concurrency
            for s in self.streams
            if s.error_p50_ms < MAX_TTFT_ERROR_MS and s.failed == 0
        ]
        return max(held, default=0)


async def _closed(
    url: str,
    *,
    concurrency: int,
    duration_s: float | None,
    requests: int | None,
    stream: bool,
    max_tokens: int,
    stagger_s: float = 0.0,
) -> tuple[list[RequestRecord], dict[str, object], float]:
    target = Target(base_url=url, model_name="selftest", stream=stream, timeout_s=60.0)
    spec = PromptSpec(PROMPT.prompt, max_tokens, None)
    plan = StepPlan("selftest", [spec], requests, WindowPlan(duration_s=duration_s), "x")
    records: list[RequestRecord] = []
    clock = RunClock()
    monitor = LoopMonitor()
    async with ClientPool(target) as clients:
        monitor.start()
        start = clock.now()
        await run_closed_step(
            clients, target, plan, concurrency, clock=clock, on_record=records.append,
            stop=StopFlag(), stagger_s=stagger_s, backoff=False,
        )  # fmt: skip
        wall = clock.now() - start
        report = monitor.step_report()
        await monitor.stop()
    return records, report, wall


def measure_requests_per_s(
    url: str, *, concurrency: int = 32, duration_s: float = 3.0
) -> tuple[float, float]:
    """Non-streamed one-token requests/s the client completes, and its loop's CPU fraction."""
    records, report, wall = asyncio.run(
        _closed(
            url,
            concurrency=concurrency,
            duration_s=duration_s,
            requests=None,
            stream=False,
            max_tokens=1,
        )
    )
    ok = sum(1 for r in records if r.ok)
    return ok / wall if wall > 0 else 0.0, float(report["loop_cpu_fraction"])  # type: ignore[arg-type]


def measure_streams(
    url: str,
    *,
    ttft_ms: float,
    tpot_ms: float,
    levels: Sequence[int],
    max_tokens: int = 16,
    rounds: int = 4,
) -> tuple[float, list[StreamLevel]]:
    """TTFT error at each concurrency; stops after the first level past 2 ms."""
    offset: float | None = None
    out: list[StreamLevel] = []
    for concurrency in sorted(set([1, *levels])):
        records, report, _ = asyncio.run(
            _closed(
                url,
                concurrency=concurrency,
                duration_s=None,
                requests=concurrency * rounds,
                stream=True,
                max_tokens=max_tokens,
                # Streams start spread over one request's length, as independent users would;
                # in lockstep every round would be a burst of `concurrency` first tokens.
                stagger_s=(ttft_ms + (max_tokens - 1) * tpot_ms) / 1000.0,
            )
        )
        # The first round opens connections: measure the steady rounds.
        records.sort(key=lambda r: r.send)
        steady = records[concurrency:] if rounds > 1 else records
        ttfts = sorted(
            (r.first_token - r.send) * 1000 for r in steady if r.ok and r.first_token is not None
        )
        if not ttfts:
            break
        p50, p99 = percentile(ttfts, 50), percentile(ttfts, 99)
        if offset is None:
            offset = p50 - ttft_ms
        lag = report["loop_lag_ms"]
        level = StreamLevel(
            concurrency=concurrency,
            requests=len(records),
            failed=sum(1 for r in records if not r.ok),
            ttft_p50_ms=round(p50, 3),
            ttft_p99_ms=round(p99, 3),
            error_p50_ms=round(p50 - ttft_ms - offset, 3),
            error_p99_ms=round(p99 - ttft_ms - offset, 3),
            loop_lag_p99_ms=float(lag["p99"] or 0.0),  # type: ignore[index]
            loop_cpu_fraction=float(report["loop_cpu_fraction"]),  # type: ignore[arg-type]
        )
        out.append(level)
        if level.error_p50_ms >= MAX_TTFT_ERROR_MS or level.failed:
            break
    return offset or 0.0, out


def measure_ceiling(
    url: str,
    *,
    ttft_ms: float,
    tpot_ms: float,
    levels: Sequence[int] = (16, 64, 128, 256, 512),
    duration_s: float = 3.0,
) -> CeilingResult:
    rps, cpu = measure_requests_per_s(url, duration_s=duration_s)
    offset, streams = measure_streams(url, ttft_ms=ttft_ms, tpot_ms=tpot_ms, levels=levels)
    return CeilingResult(rps, cpu, ttft_ms, tpot_ms, offset, streams)
