"""A broken target stops the run within seconds, with exit 3 and the server's own reason:
nothing listening, every request refused as a client error, the server gone mid-run, or no
request succeeding at all; and a sweep where no load holds exits 1. Through the real CLI over
real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capplan.cli import app
from capplan.loadtest.child_process import free_port
from capplan.loadtest.record import RequestRecord, read_records
from capplan.loadtest.stop import CONNECT_ERRORS_IN_A_ROW, StopRules
from reference_server.emulated import EmulatedBackend

from .conftest import ServerFactory
from .misbehaving_server import misbehaving_server

runner = CliRunner()
STOP_WITHIN_S = 5.0
MAX_SENT = 100


def _loadtest(url: str, out: Path, *extra: str) -> tuple[int, str, float]:
    """(exit code, stderr, seconds) of `capplan loadtest` against `url`."""
    started = time.monotonic()
    result = runner.invoke(
        app,
        ["loadtest", "--url", url, "--concurrency", "4", "--duration", "10s", "--out", str(out),
         "--no-progress", "--no-reports", *extra],
    )  # fmt: skip
    return result.exit_code, result.stderr, time.monotonic() - started


def _sent(out: Path) -> int:
    path = out / "requests.jsonl"
    return len(read_records(path)) if path.exists() else 0


def test_a_dead_port_exits_3_before_any_request_with_one_line(tmp_path: Path) -> None:
    code, stderr, seconds = _loadtest(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert code == 3, stderr
    assert stderr.startswith("error: nothing answers at http://127.0.0.1:")
    assert len(stderr.strip().splitlines()) == 1
    assert seconds < STOP_WITHIN_S and _sent(tmp_path) == 0


def test_ci_smoke_against_a_dead_port_exits_3(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["loadtest", "ci-smoke", "--url", f"http://127.0.0.1:{free_port()}", "--out",
         str(tmp_path), "--no-progress", "--no-reports"],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "nothing answers" in result.stderr


def test_an_all_400_target_stops_the_run_with_the_servers_message(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    # The model's context is 80 tokens; every prompt is 479.
    with emulated_server(max_context=80) as url:
        code, stderr, seconds = _loadtest(
            url, tmp_path, "--prompt-tokens", "479", "--max-tokens", "16"
        )
    assert code == 3, stderr
    assert "the first 5 answers were all HTTP 400" in stderr
    assert "prompt (479 tokens) + max_tokens (16) is over the model's context of 80" in stderr
    assert seconds < STOP_WITHIN_S and 5 <= _sent(tmp_path) < MAX_SENT
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"]["step"] == "concurrency=4"
    assert not summary["valid"] and "stopped early" in summary["reasons"][-1]


def test_a_server_that_dies_mid_run_stops_it_after_connection_errors_in_a_row(
    tmp_path: Path,
) -> None:
    with misbehaving_server(vanish_after=6) as base:
        code, stderr, seconds = _loadtest(f"{base}/listed", tmp_path)
    assert code == 3, stderr
    assert f"{CONNECT_ERRORS_IN_A_ROW} connection errors in a row" in stderr
    records = read_records(tmp_path / "requests.jsonl")
    assert sum(r.ok for r in records) >= 1  # what it answered before it died is kept
    assert seconds < STOP_WITHIN_S and len(records) < MAX_SENT


def test_a_run_where_no_request_succeeded_never_exits_0(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    # One slot, held until the request times out; every other request is refused (503).
    backends: list[EmulatedBackend] = []
    with emulated_server(max_concurrent=1, queue_size=0, backend_out=backends) as url:
        backends[0].hold()
        try:
            code, stderr, _ = _loadtest(
                url, tmp_path, "--concurrency", "2", "--duration", "1s", "--timeout", "2s"
            )
        finally:
            backends[0].release()
    assert code == 3, stderr
    assert "no request succeeded" in stderr and "503" in stderr


@pytest.mark.slow
def test_a_sweep_against_a_dead_port_exits_3(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["sweep", "--url", f"http://127.0.0.1:{free_port()}", "--points", "1,2", "--requests",
         "2", "--out", str(tmp_path), "--no-plot"],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: nothing answers")


def _refused(status: int | None, error: str | None = None, detail: str = "") -> RequestRecord:
    return RequestRecord(request_id="r", status=status, error=error, error_detail=detail)


def test_stop_rules_quote_the_server_and_spare_429_and_mixed_answers() -> None:
    body = json.dumps({"error": {"message": "model 'x' does not exist", "code": 404}})
    rules = StopRules()
    for _ in range(4):
        assert rules.observe(_refused(404, "http_error", body)) is None
    assert rules.observe(_refused(404, "http_error", body)) == (
        "the first 5 answers were all HTTP 404: model 'x' does not exist"
    )
    limited = StopRules()
    assert all(limited.observe(_refused(429, "http_error")) is None for _ in range(10))
    mixed = StopRules()
    statuses = [400, 400, 200, 400, 400, 400, 400, 400]
    assert all(mixed.observe(_refused(s, None if s == 200 else "http_error")) is None
               for s in statuses)  # fmt: skip
    refused = StopRules()
    errors = [_refused(None, "connect_error", "ConnectError: refused")] * 4
    assert all(refused.observe(r) is None for r in errors)
    assert refused.observe(_refused(200)) is None  # an answer breaks the row
    assert all(refused.observe(r) is None for r in errors)
    assert refused.observe(errors[0]) == "5 connection errors in a row: ConnectError: refused"


def test_a_sweep_where_no_load_holds_its_slo_exits_1(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=20, tpot_ms=1) as url:
        result = runner.invoke(
            app,
            ["sweep", "--url", url, "--points", "1,2", "--requests", "3", "--slo",
             "p50(ttft)<1ms", "--out", str(tmp_path), "--no-plot", "--no-bisect"],
        )  # fmt: skip
    assert result.exit_code == 1, result.output
