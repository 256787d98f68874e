"""The project's own CI performance regression: ci-smoke against the committed baseline.

Limits are on medians, which a loaded 2-core machine moves by a few ms at most, and wide (50%)
because the emulated timings are small (20 ms TTFT, 5 ms TPOT); a doubled TPOT moves the median
TPOT by +100% and the median E2E by some +75%, so it must fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "reports" / "baselines" / "ci-smoke"
CI_LIMITS = ("p50_tpot_ms=50%", "p50_e2e_ms=50%", "error_rate=0.05")
EMULATED = ["--backend", "emulated", "--ttft-ms", "20", "--max-concurrent", "8"]


def capplan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capplan.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )


def smoke_run(out: Path, tpot_ms: float) -> Path:
    """`capplan loadtest ci-smoke` with the emulated server launched at the given TPOT."""
    result = capplan(
        "loadtest", "ci-smoke", "--out", str(out), "--no-progress", "--no-reports",
        "--launch", "--", *EMULATED, "--tpot-ms", f"{tpot_ms:g}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def compare(current: Path) -> subprocess.CompletedProcess[str]:
    limits = [arg for limit in CI_LIMITS for arg in ("--max-regression", limit)]
    return capplan("compare", str(BASELINE), str(current), *limits)


def test_the_committed_baseline_is_a_real_ci_smoke_run() -> None:
    import json

    summary = json.loads((BASELINE / "summary.json").read_text())
    assert summary["config"]["name"] == "ci-smoke"
    assert [s["step"] for s in summary["steps"]] == ["concurrency=1", "concurrency=4"]
    assert (BASELINE / "requests.jsonl").stat().st_size > 0


@pytest.mark.slow
def test_ci_smoke_passes_against_the_baseline_and_a_doubled_tpot_fails(tmp_path: Path) -> None:
    same = compare(smoke_run(tmp_path / "same", tpot_ms=5))
    assert same.returncode == 0, same.stdout + same.stderr
    doubled = compare(smoke_run(tmp_path / "doubled", tpot_ms=10))
    assert doubled.returncode == 1, doubled.stdout + doubled.stderr
    assert "p50_tpot_ms" in doubled.stdout and "REGRESSION" in doubled.stdout
