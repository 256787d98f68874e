"""The sampler against the real reference server: /metrics and /stats as it serves them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from capplan.loadtest.clock import RunClock
from capplan.loadtest.telemetry.sampler import TelemetrySampler
from capplan.settings import ServerSettings
from reference_server.app import create_app
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.testing import serve_in_thread

KV_BYTES_PER_TOKEN = 4096


def test_queue_and_emulated_kv_memory_come_from_the_reference_server(tmp_path: Path) -> None:
    timing = EmulatedTiming(
        ttft_ms=0.0, tpot_ms=0.0, kv_bytes_per_token=KV_BYTES_PER_TOKEN, kv_budget_bytes=2**30
    )
    backend = EmulatedBackend(timing)
    backend.hold()  # generations wait before their first token: slots stay taken
    config = ServerSettings(backend="emulated", max_concurrent=2, queue_size=8, vram_guard=None)
    with serve_in_thread(create_app(config, backend)) as url:
        statuses: list[int] = []

        def send() -> None:
            body = {"model": "emulated", "prompt": "one two three", "max_tokens": 5}
            response = httpx.post(url + "/v1/completions", json=body, timeout=30)
            statuses.append(response.status_code)

        clients = [threading.Thread(target=send) for _ in range(5)]
        for client in clients:
            client.start()
        sampler = TelemetrySampler(RunClock(), tmp_path / "t.csv", target_url=url, nvml=None)
        sampler.open()
        assert sampler.target is not None
        sampler.target.start()
        try:
            deadline = time.monotonic() + 20
            polls = 1
            settled = {"stats_queued": 3.0, "metrics_waiting": 3.0}
            # /metrics and /stats are read one after the other: wait until both saw all five.
            while {k: sampler.target.latest().get(k) for k in settled} != settled:
                assert time.monotonic() < deadline, sampler.target.latest()
                assert sampler.target.wait_for_polls(polls, timeout=10)
                polls += 1
            row = sampler.sample_once()
        finally:
            backend.release()
            for client in clients:
                client.join(timeout=30)
            sampler.stop()
    assert statuses == [200] * 5
    assert (row["stats_running"], row["stats_queued"]) == (2.0, 3.0)
    assert row["stats_emulated"] is True
    assert row["metrics_flavor"] == "capplan"
    assert (row["metrics_running"], row["metrics_waiting"]) == (2.0, 3.0)
    kv_bytes = 2 * (3 + 5) * KV_BYTES_PER_TOKEN  # two running: prompt + max_tokens reserved each
    assert row["metrics_gpu_memory_used_bytes"] == kv_bytes
    assert row["gpu_mem_source"] == "target /stats (emulated_kv)"
    assert row["gpu_mem_used_mib"] == round(kv_bytes / 2**20, 3)
    assert row["gpu_mem_total_mib"] == 1024.0
