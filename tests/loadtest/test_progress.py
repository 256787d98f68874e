"""The live progress line and the rolling figures behind it."""

from __future__ import annotations

import pytest

from capplan.loadtest.live import LiveStats
from capplan.loadtest.record import RequestRecord
from capplan.render.loadtest import progress_text


def _record(send: float, ttft: float, end: float, tokens: int, status: int = 200) -> RequestRecord:
    return RequestRecord(
        request_id="r",
        send=send,
        first_token=send + ttft,
        end=end,
        status=status,
        error=None if status == 200 else "http_error",
        output_tokens=tokens,
    )


def test_progress_shows_counts_rolling_percentiles_tokens_per_s_and_gpu_memory() -> None:
    live = LiveStats(start=100.0, steps=2)
    live.begin_step("concurrency=4", 1)
    for i in range(5):
        live.on_send()
        live.on_record(_record(100.0 + i, 0.1 * (i + 1), 101.0 + i, 50))
    live.on_send()
    live.on_record(_record(105.0, 0.0, 105.1, 0, status=503))
    live.on_send()
    snap = live.snapshot(
        106.0, {"gpu_mem_used_mib": 9625.6, "gpu_mem_total_mib": 10240, "gpu_mem_source": "nvml"}
    )
    assert (snap.sent, snap.finished, snap.failed, snap.in_flight) == (7, 6, 1, 1)
    assert snap.ttft_p50_ms == pytest.approx(300.0)
    # Tokens of requests that ended in the last 5 s (ends 101..105): 5 x 50 over 5 s.
    assert snap.output_tokens_per_s == 50.0
    line = progress_text(snap).plain
    for part in ("[2/2] concurrency=4", "sent 7", "failed 1", "TTFT p50/p95 300ms", "50 tok/s",
                 "GPU mem 9.4/10.0 GiB", "nvml"):  # fmt: skip
        assert part in line
