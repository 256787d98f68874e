"""The same scenario through the httpx engine and the Locust engine measures the same server.

The emulated backend has exact timing (TTFT 50 ms, TPOT 10 ms), so both engines must report
medians within 10% of each other and the same request counts.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.locust.engine import run_locust
from capplan.loadtest.scenario import build_config

pytestmark = pytest.mark.slow


def _within(a: float, b: float, fraction: float) -> bool:
    return abs(a - b) <= fraction * max(a, b)


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
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert _within(lo[metric]["p50"], h[metric]["p50"], 0.10), (metric, lo[metric], h[metric])
    assert _within(lo["ttft_ms"]["p50"], ttft_ms, 0.25)
    assert _within(lo["tpot_ms"]["p50"], tpot_ms, 0.25)
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
    assert lo["locust"]["steps"][0]["mode"] == "open"
    assert "open loop" in lo["locust"]["steps"][0]["how"]
    assert lo["steps"][0]["load_model_run"]["mode"] == "open"
    # Every record keeps its intended start on the schedule both engines share: 40 ms apart.
    intended = sorted(r.intended_start for r in locust_run.records if r.intended_start)
    gaps = [b - a for a, b in itertools.pairwise(intended)]
    assert len(intended) == 30 and all(abs(g - 0.04) < 1e-6 for g in gaps)
    assert lo["generator_lag_ms"]["p99"] < 10.0
    for metric in ("ttft_ms", "e2e_ms", "latency_ms"):
        assert _within(lo[metric]["p50"], h[metric]["p50"], 0.10), (metric, lo[metric], h[metric])
