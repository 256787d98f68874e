"""Exit codes of the commands, through the real `capplan` entry point in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reference_server.emulated import EmulatedTiming

from .conftest import synthetic_run, write_run


def capplan(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capplan.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_compare_exit_codes_pass_regression_usage(tmp_path: Path) -> None:
    base = write_run(synthetic_run(1, ttft_ms=50, tpot_ms=10), tmp_path / "base")
    same = write_run(synthetic_run(2, ttft_ms=50, tpot_ms=10), tmp_path / "same")
    slow = write_run(synthetic_run(3, ttft_ms=50, tpot_ms=20), tmp_path / "slow")
    md, junit = tmp_path / "c.md", tmp_path / "c.xml"

    ok = capplan("compare", str(base), str(same), "--max-regression", "p95_e2e_ms=10%")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = capplan(
        "compare", str(base), str(slow), "--max-regression", "p50(tpot)=10%",
        "--markdown", str(md), "--junit", str(junit),
    )  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "REGRESSION" in bad.stdout and "p50_tpot_ms" in md.read_text()
    assert "<failure" in junit.read_text()
    usage = capplan("compare", str(base), str(tmp_path / "nowhere"))
    assert usage.returncode == 2 and usage.stderr.startswith("error: ")
    assert capplan("compare", str(base), str(same), "--max-regression", "oops").returncode == 2


@pytest.mark.slow
def test_loadtest_thresholds_set_the_exit_code(tmp_path: Path, serve_emulated) -> None:
    common = ["--requests", "6", "--concurrency", "2", "--max-tokens", "4", "--no-progress"]
    with serve_emulated(EmulatedTiming(ttft_ms=20, tpot_ms=5)) as url:
        passing = capplan(
            "loadtest", "--url", url, *common, "--out", str(tmp_path / "a"),
            "--threshold", "p95(ttft)<5s", "--threshold", "error_rate<1%",
        )  # fmt: skip
        failing = capplan(
            "loadtest", "--url", url, *common, "--out", str(tmp_path / "b"),
            "--threshold", "p95(ttft_ms)<1", "--threshold", "error_rate<1%",
        )  # fmt: skip
        usage = capplan("loadtest", "--url", url, *common, "--threshold", "p95(ttft)<<1")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert usage.returncode == 2 and "threshold" in usage.stderr


def test_plan_command_sizes_from_a_measured_run(tmp_path: Path) -> None:
    run = write_run(synthetic_run(1, ttft_ms=50, tpot_ms=10), tmp_path / "run")
    out = tmp_path / "plan.json"
    result = capplan(
        "plan", "--run", str(run), "--rate", "20", "--slo", "p95(ttft)<1s", "--json", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads(out.read_text())
    # 4 slots x ~200 ms service = ~20 req/s per replica; 24 req/s design rate needs at least 2.
    assert plan["profile"]["slots"] == 4
    assert plan["replicas"] >= 2 and plan["gpus"] == plan["replicas"]
    n = plan["replicas"]
    assert f"plan: {n} replicas x 1 GPU = {n} GPUs;" in result.stdout


def test_a_one_replica_plan_reads_in_the_singular(tmp_path: Path) -> None:
    run = write_run(synthetic_run(1, ttft_ms=50, tpot_ms=10), tmp_path / "run")
    result = capplan("plan", "--run", str(run), "--rate", "2", "--slo", "p95(ttft)<1s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plan: 1 replica x 1 GPU = 1 GPU;" in result.stdout
