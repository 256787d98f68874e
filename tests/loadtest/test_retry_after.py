"""`--honor-retry-after`: a closed-loop worker refused with 429/503 waits as the server asks."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.run import RunResult, load_scenario

from .conftest import ServerFactory


def _run(url: str, out: Path, **overrides: Any) -> RunResult:
    values: dict[str, Any] = {"url": url, "prompt_tokens": 8, "max_tokens": 2, "concurrency": 1}
    values.update(overrides)
    return run_load(load_scenario(None, values), out_dir=out, handle_signals=False, reports=False)


def _by_send(records: list[RequestRecord]) -> list[RequestRecord]:
    return sorted(records, key=lambda r: r.send)


def test_a_refused_worker_waits_the_retry_after_before_its_next_request(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, rate_limit="1/second") as url:
        result = _run(url, tmp_path, duration="2.5s", honor_retry_after=True)
    records = _by_send(result.records)
    refused = [r for r in records if r.status == 429]
    assert refused and all(r.retry_after_s for r in refused)
    for before, after in itertools.pairwise(records):
        if before.status == 429:
            assert before.retry_after_s is not None
            assert after.send - before.end >= before.retry_after_s - 0.01
    # One worker, one request allowed a second: a handful of sends, not a flood of 429s.
    assert len(records) <= 8
    assert result.summary["config"]["honor_retry_after"] is True
    assert "Retry-After" in result.summary["load_model_run"]["how"]


def test_without_the_flag_a_refused_worker_resends_at_once(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, rate_limit="1/second") as url:
        result = _run(url, tmp_path, duration="0.5s")
    assert result.summary["requests"]["by_status"]["429"] >= 10


def test_the_wait_ends_with_the_steps_duration(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    # Retry-After is about a minute here; the step lasts one second and must not run past it.
    with emulated_server(ttft_ms=1, rate_limit="1/minute") as url:
        result = _run(url, tmp_path, duration="1s", honor_retry_after=True)
    assert [r.status for r in _by_send(result.records)] == [200, 429]
    assert result.records[-1].retry_after_s is not None and result.records[-1].retry_after_s > 30
    assert result.summary["ended_at"] - result.summary["started_at"] < 10
