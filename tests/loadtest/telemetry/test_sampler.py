from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from capplan.loadtest.child_process import free_port
from capplan.loadtest.clock import RunClock
from capplan.loadtest.telemetry.sampler import TelemetrySampler, best_gpu_figures
from capplan.loadtest.telemetry.target import server_origin

CAPPLAN_METRICS = """\
# TYPE capplan:num_requests_running gauge
capplan:num_requests_running 6.0
# TYPE capplan:num_requests_waiting gauge
capplan:num_requests_waiting 2.0
# TYPE capplan:gpu_memory_used_bytes gauge
capplan:gpu_memory_used_bytes 2147483648
"""


class _Target:
    """What the stdlib test server answers; `gate` holds /metrics until set."""

    def __init__(self) -> None:
        self.metrics: str | None = CAPPLAN_METRICS
        self.stats: dict[str, Any] | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.paths: list[str] = []


@contextmanager
def serve_target(target: _Target) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            target.paths.append(self.path)
            if self.path == "/metrics" and target.metrics is not None:
                target.gate.wait(timeout=10)
                body, kind = target.metrics.encode(), "text/plain; version=0.0.4"
            elif self.path == "/stats" and target.stats is not None:
                body, kind = json.dumps(target.stats).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        target.gate.set()
        server.shutdown()
        server.server_close()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_rows_are_written_and_flushed_from_the_sampler_thread(
    tmp_path: Path, make_nvml: Any
) -> None:
    clock = RunClock()
    nvml = make_nvml()
    out = tmp_path / "telemetry.csv"
    sampler = TelemetrySampler(clock, out, target_url=None, interval_s=0.01, nvml=nvml)
    before = clock.now()
    sampler.start()
    try:
        assert sampler.wait_for_samples(3, timeout=10)
        assert len(_rows(out)) >= 3  # readable while running: each row is flushed
        assert sampler.latest()["gpu0_mem_used_mib"] == 1024.0
    finally:
        sampler.stop()
    after = clock.now()
    rows = _rows(out)
    times = [float(r["t"]) for r in rows]
    assert times == sorted(times)
    assert before <= times[0] and times[-1] <= after
    assert "capplan-telemetry" in nvml.threads
    assert nvml.shutdown
    assert rows[-1]["gpu_mem_source"] == "nvml"
    assert float(rows[-1]["host_mem_total_mib"]) > 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sources"]["nvml"] == "ok"
    assert meta["gpus"][0]["name"] == "NVIDIA GeForce RTX 3080"
    assert meta["samples"] == len(rows)


def test_target_metrics_scraped_over_http_and_missing_stats_dropped(tmp_path: Path) -> None:
    target = _Target()
    with serve_target(target) as base_url:
        out = tmp_path / "telemetry.csv"
        sampler = TelemetrySampler(
            RunClock(), out, target_url=base_url + "/v1", interval_s=0.01, nvml=None
        )
        sampler.start()
        try:
            assert sampler.target is not None
            assert sampler.target.wait_for_polls(1, timeout=10)
            assert sampler.wait_for_samples(sampler.samples + 1, timeout=10)
            row = sampler.latest()
        finally:
            sampler.stop()
    assert row["metrics_running"] == 6.0
    assert row["metrics_waiting"] == 2.0
    assert row["gpu_mem_used_mib"] == 2048.0
    assert row["gpu_mem_source"] == "target /metrics"
    assert target.paths.count("/stats") == 1  # 404 once, then never asked again
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sources"]["target/stats"] == "absent (404)"
    assert meta["sources"]["target/metrics"] == "ok"
    assert meta["sources"]["nvml"].startswith("unavailable")


def test_stats_memory_used_when_nvml_and_metrics_lack_it(tmp_path: Path) -> None:
    target = _Target()
    target.metrics = None
    target.stats = {
        "running": 1,
        "queued": 0,
        "memory": {"kind": "emulated_kv", "used_bytes": 3 * 2**30},
    }
    with serve_target(target) as base_url:
        sampler = TelemetrySampler(
            RunClock(), tmp_path / "t.csv", target_url=base_url, nvml=None, host=False
        )
        sampler.open()
        assert sampler.target is not None
        sampler.target.start()
        assert sampler.target.wait_for_polls(1, timeout=10)
        row = sampler.sample_once()
        sampler.stop()
    assert row["stats_running"] == 1.0
    assert row["gpu_mem_used_mib"] == 3072.0
    assert row["gpu_mem_source"] == "target /stats (emulated_kv)"


def test_cpu_backend_process_memory_is_not_called_gpu_memory() -> None:
    row = {
        "stats_memory_kind": "process_rss",
        "stats_gpu_memory_used_mib": 900.0,
        "metrics_gpu_memory_used_bytes": 900.0 * 2**20,
    }
    assert best_gpu_figures(row, 0) == {}


def test_slow_target_does_not_hold_back_gpu_rows(tmp_path: Path, make_nvml: Any) -> None:
    target = _Target()
    target.gate.clear()  # /metrics hangs until released
    with serve_target(target) as base_url:
        sampler = TelemetrySampler(
            RunClock(), tmp_path / "t.csv", target_url=base_url, interval_s=0.01, nvml=make_nvml()
        )
        sampler.start()
        try:
            assert sampler.wait_for_samples(5, timeout=10)
            assert "metrics_running" not in sampler.latest()
        finally:
            target.gate.set()
            sampler.stop()


def test_unreachable_target_is_reported_and_rows_continue(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: connections are refused
    out = tmp_path / "t.csv"
    sampler = TelemetrySampler(
        RunClock(), out, target_url=f"http://127.0.0.1:{port}", interval_s=0.01, nvml=None
    )
    sampler.start()
    try:
        assert sampler.target is not None
        assert sampler.target.wait_for_polls(1, timeout=10)
        assert sampler.wait_for_samples(2, timeout=10)
    finally:
        sampler.stop()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sources"]["target/metrics"].startswith("unreachable")
    assert len(_rows(out)) >= 2


def test_server_origin_drops_the_api_path() -> None:
    assert server_origin("http://10.0.0.5:8000/v1") == "http://10.0.0.5:8000"
    assert server_origin("localhost:8000") == "http://localhost:8000"


def test_nvml_readings_of_a_remote_target_are_labelled_as_the_client_s(
    tmp_path: Path, make_nvml: Any
) -> None:
    out = tmp_path / "t.csv"
    sampler = TelemetrySampler(
        RunClock(), out, target_url="http://gpu-box.example:8000", nvml=make_nvml(), host=False
    )
    sampler.open()  # the sidecar is written at open; nothing is polled
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sources"]["nvml"] == (
        "ok: GPUs of this client machine, not of the target gpu-box.example"
    )
    sampler.stop()


def test_a_failing_reading_stops_sampling_without_raising(tmp_path: Path, make_nvml: Any) -> None:
    nvml = make_nvml()
    failed = threading.Event()

    def broken() -> None:
        if threading.current_thread().name == "capplan-telemetry":
            failed.set()
            raise RuntimeError("driver went away")

    nvml.on_memory_read = broken
    out = tmp_path / "t.csv"
    sampler = TelemetrySampler(RunClock(), out, target_url=None, interval_s=0.01, nvml=nvml)
    sampler.start()
    assert failed.wait(timeout=10)
    nvml.on_memory_read = None
    sampler.stop()  # joins the dead thread, takes the closing row
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sources"]["sampler"] == "sampling stopped: RuntimeError: driver went away"
    assert len(_rows(out)) == 1
