"""`capplan loadtest` through the real CLI."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capplan.cli import app

from .conftest import ServerFactory

runner = CliRunner()


def _args(url: str, out: Path, *extra: str) -> list[str]:
    return ["loadtest", "ci-smoke", "--url", url, "--requests", "4", "--out", str(out),
            "--warmup", "0", "--no-progress", "--no-reports", *extra]  # fmt: skip


def test_thresholds_pass_with_exit_0_and_fail_with_exit_1(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=5, tpot_ms=1) as url:
        passing = runner.invoke(app, _args(url, tmp_path / "a", "--threshold", "p95(ttft)<2s"))
        failing = runner.invoke(app, _args(url, tmp_path / "b", "--threshold", "p50(e2e)<1ms"))
    assert passing.exit_code == 0, passing.output
    assert "pass" in passing.output
    assert failing.exit_code == 1, failing.output
    assert "FAIL" in failing.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["concurrency=1", "concurrency=4"]
    assert summary["config"]["target"] == url


def test_flags_override_the_scenario(emulated_server: ServerFactory, tmp_path: Path) -> None:
    with emulated_server() as url:
        flags = ["--concurrency", "2", "--max-tokens", "3", "--no-stream", "--no-backoff",
                 "--max-retries", "1", "--min-requests", "3"]  # fmt: skip
        result = runner.invoke(app, _args(url, tmp_path, *flags))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == "concurrency=2"
    assert summary["tokens"]["output_total"] == 4 * 3
    assert summary["config"]["stream"] is False
    assert (summary["config"]["backoff"], summary["config"]["max_retries"]) == (False, 1)
    assert summary["window"]["min_requests"] == 3


def test_a_bad_threshold_is_refused_before_any_request(tmp_path: Path) -> None:
    result = runner.invoke(app, _args("http://127.0.0.1:9", tmp_path, "--threshold", "p95 ttft"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "requests.jsonl").exists()


def test_bad_flag_values_are_input_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, _args("http://127.0.0.1:9", tmp_path, "--arrival", "zipf"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "zipf" in result.stderr


@pytest.mark.slow
def test_launch_starts_the_reference_server_and_stops_it_after(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "loadtest",
            "ci-smoke",
            "--requests",
            "3",
            "--warmup",
            "0",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--no-reports",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Two ladder steps; the second, at concurrency 4, goes on to one request per user.
    assert summary["requests"]["ok"] == 3 + 4
    assert summary["steps"][1]["window"]["extension_requests"] == 1
    port = int(summary["config"]["target"].rsplit(":", 1)[1])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
