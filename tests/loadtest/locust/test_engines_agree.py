"""The same scenario through the httpx engine and the Locust engine measures the same server.

The emulated backend has exact timing (TTFT 50 ms, TPOT 10 ms), so both engines must report
medians within 10% of each other, give or take the lateness each client measured of itself,
and the same request counts.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.locust.engine import run_locust
from capplan.loadtest.scenario import build_config

pytestmark = pytest.mark.slow


def _within(a: float, b: float, fraction: float, slack_ms: float = 0.0) -> bool:
    return abs(a - b) <= fraction * max(a, b) + slack_ms


def _lateness_ms(*summaries: dict[str, Any]) -> float:
    """How late the clients' own loops woke (p99 of their self-checks), added up.

    The two runs are sequential on a machine shared with other work: each engine's timestamps
    are late by its own loop lag, and 10% of a 10 ms TPOT is 1 ms, less than one late wake-up.
    So the engines must agree within 10% plus the lateness they measured themselves.
    """
    total = 0.0
    for summary in summaries:
        client = summary["steps"][0]["client"]
        # httpx: one loop; Locust: one per worker process, the worst decides.
        checks = client["workers"].values() if "workers" in client else [client]
        total += max(c["loop_lag_ms"]["p99"] or 0.0 for c in checks)
    return total


def test_closed_loop_medians_and_counts_match_between_engines(
    emulated_url: str, emulated_timing: tuple[float, float], tmp_path: Path
) -> None:
    ttft_ms, tpot_ms = emulated_timing
    config = build_config(
        {},
        dict(url=emulated_url, concurrency="4", requests=40, prompt_tokens=32, max_tokens=12),
    )
    httpx_run = run_load(config, out_dir=tmp_path / "httpx", handle_signals=False, reports=False)
    locust_run = run_locust(config, out_dir=tmp_path / "locust", reports=False)

    h, lo = httpx_run.summary, locust_run.summary
    assert lo["engine"] == "locust"
    assert lo["requests"] == h["requests"]
    assert lo["requests"]["ok"] == 40
    slack = _lateness_ms(h, lo)
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert _within(lo[metric]["p50"], h[metric]["p50"], 0.10, slack), (
            metric, lo[metric], h[metric], slack,
        )  # fmt: skip
    assert _within(lo["ttft_ms"]["p50"], ttft_ms, 0.25, slack)
    assert _within(lo["tpot_ms"]["p50"], tpot_ms, 0.25, slack)
    step = lo["locust"]["steps"][0]
    assert step["mode"] == "closed" and step["users"] == 4
    assert "closed loop" in step["how"]
    assert lo["load_model_run"] == {"engine": "locust", "mode": "closed", "how": step["how"]}
    assert (tmp_path / "locust" / "summary.json").is_file()
    assert len((tmp_path / "locust" / "requests.jsonl").read_text().splitlines()) == 40


def test_open_loop_runs_as_a_true_open_loop_in_both_engines(
    emulated_url: str, tmp_path: Path
) -> None:
    config = build_config(
        {},
        dict(
            url=emulated_url,
            rate="25",
            arrival="constant",
            requests=30,
            prompt_tokens=16,
            max_tokens=8,
        ),
    )
    httpx_run = run_load(config, out_dir=tmp_path / "httpx", handle_signals=False, reports=False)
    locust_run = run_locust(config, out_dir=tmp_path / "locust", reports=False)

    h, lo = httpx_run.summary, locust_run.summary
    assert lo["requests"] == h["requests"]
    slack = _lateness_ms(h, lo)
    assert lo["locust"]["steps"][0]["mode"] == "open"
    assert "open loop" in lo["locust"]["steps"][0]["how"]
    assert lo["steps"][0]["load_model_run"]["mode"] == "open"
    # Every record keeps its intended start on the schedule both engines share: 40 ms apart.
    intended = sorted(r.intended_start for r in locust_run.records if r.intended_start)
    gaps = [b - a for a, b in itertools.pairwise(intended)]
    assert len(intended) == 30 and all(abs(g - 0.04) < 1e-6 for g in gaps)
    assert lo["generator_lag_ms"]["p99"] < 10.0
    for metric in ("ttft_ms", "e2e_ms", "latency_ms"):
        assert _within(lo[metric]["p50"], h[metric]["p50"], 0.10, slack), (
            metric, lo[metric], h[metric], slack,
        )  # fmt: skip
