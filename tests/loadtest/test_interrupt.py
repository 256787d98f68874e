"""Ctrl-C and kill -9 on a real `capplan loadtest` process keep every finished record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capplan.loadtest.record import read_records

from .conftest import REPO, ServerFactory

pytestmark = pytest.mark.slow


def _start(url: str, out: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "capplan.cli", "loadtest", "--url", url, "--model-name", "m",
               "--concurrency", "4", "--duration", "60s", "--max-tokens", "10",
               "--prompt-tokens", "8", "--out", str(out), "--no-progress",
               "--no-reports"]  # fmt: skip
    return subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _complete_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def _wait_for_records(process: subprocess.Popen[bytes], path: Path, n: int) -> int:
    deadline = time.monotonic() + 30
    while _complete_lines(path) < n:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "the load test wrote no records"
        time.sleep(0.05)
    return _complete_lines(path)


def test_ctrl_c_writes_the_summary_of_every_finished_request(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=10, tpot_ms=10) as url:
        process = _start(url, tmp_path)
        try:
            _wait_for_records(process, tmp_path / "requests.jsonl", 8)
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, output.decode()
    records = read_records(tmp_path / "requests.jsonl")
    assert len(records) >= 8
    assert all(r.ok for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["requests"]["total"] + summary["requests"]["warmup_excluded"] == len(records)
    assert not summary["valid"]


def test_kill_9_loses_no_finished_record(emulated_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    with emulated_server(ttft_ms=10, tpot_ms=10) as url:
        process = _start(url, tmp_path)
        try:
            seen = _wait_for_records(process, path, 8)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
    records = read_records(path)
    # Every line written before the kill is there and whole; nothing torn after it.
    assert len(records) >= seen
    assert len(records) == _complete_lines(path)
    assert all(r.ok and r.end > r.send for r in records)
    assert not (tmp_path / "summary.json").exists()
    # The config went to disk before the first request: `capplan report` rebuilds with it.
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["target"] == url and config["model_name"] == "m" and config["seed"] == 0
