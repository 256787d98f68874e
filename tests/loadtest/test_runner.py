"""run_load end to end: ladders, open-loop schedules, files written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capplan.loadtest.arrival import schedule
from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.record import read_records
from capplan.loadtest.run import load_scenario

from .conftest import ServerFactory


def _run(url: str, out: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    values: dict[str, Any] = {"url": url, "prompt_tokens": 8, "max_tokens": 3, **overrides}
    return run_load(load_scenario(None, values), out_dir=out, handle_signals=False, reports=False)


def _offsets(records) -> list[float]:  # type: ignore[no-untyped-def]
    starts = sorted(r.intended_start for r in records)
    return [round(t - starts[0], 6) for t in starts]


def test_open_loop_ladder_is_seeded_and_records_intended_starts(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=2, tpot_ms=1) as url:
        first = _run(url, tmp_path / "a", rate="40,80", requests=8, seed=3)
        again = _run(url, tmp_path / "b", rate="40,80", requests=8, seed=3)
    assert [s["step"] for s in first.summary["steps"]] == ["rate=40", "rate=80"]
    for label in ("rate=40", "rate=80"):
        a = [r for r in first.records if r.step == label]
        b = [r for r in again.records if r.step == label]
        assert len(a) == 8 and all(r.intended_start is not None for r in a)
        assert _offsets(a) == pytest.approx(_offsets(b), abs=1e-6)
    assert read_records(tmp_path / "a" / "requests.jsonl") == first.records
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["overall"]["requests"]["total"] == 16
    assert "latency_ms" in summary["steps"][0]
    assert [s["load_model_run"]["mode"] for s in summary["steps"]] == ["open", "open"]
    assert summary["steps"][1]["load_model_run"]["engine"] == "httpx"
    assert "8 scheduled arrivals (poisson)" in summary["steps"][1]["load_model_run"]["how"]


def test_a_ramp_sends_more_requests_late_than_early(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, tpot_ms=0) as url:
        result = _run(url, tmp_path, ramp="0:60", duration="1s", arrival="constant")
    planned = schedule(rate=0.0, ramp_to=60.0, arrival="constant", duration_s=1.0)
    assert len(planned) == pytest.approx(30, abs=1)  # the integral of 0 -> 60 req/s over 1 s
    assert sum(1 for t in planned if t < 0.5) == 7  # a quarter of them in the first half
    assert _offsets(result.records) == pytest.approx([t - planned[0] for t in planned], abs=1e-6)
    assert result.summary["step"] == "ramp=0-60"


def test_warmup_is_trimmed_by_event_time(emulated_server: ServerFactory, tmp_path: Path) -> None:
    with emulated_server(ttft_ms=1, tpot_ms=0) as url:
        result = _run(url, tmp_path, rate="50", arrival="constant", requests=20, warmup="0.1s")
    warm = [r for r in result.records if r.warmup]
    # Arrivals every 20 ms: those intended in the first 100 ms (0, 20, ..., 80 ms) are warmup.
    assert len(warm) == 5
    assert result.summary["requests"]["warmup_excluded"] == 5
    assert result.summary["requests"]["total"] == 15


def test_config_json_holds_the_full_config_with_seed_and_target(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, tpot_ms=0) as url:
        result = _run(url, tmp_path, concurrency="2", requests=4, seed=11)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 11 and config["target"] == url
    assert config == result.summary["config"]
    assert result.summary["load_model_run"] == {
        "engine": "httpx",
        "mode": "closed",
        "how": "closed loop: 2 asyncio workers; each sends its next request when its previous "
        "one ends, after a 429/503 waits its Retry-After (at most 60 s) or a backoff of 0.5-8 s "
        "and resends it (at most 2 times)",
    }
