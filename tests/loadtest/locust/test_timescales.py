"""The Locust engine behaves as the httpx engine where requests are long or the target is
broken: the same step extension, warmup by requests, stop rules and backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capplan.errors import TargetError
from capplan.loadtest.child_process import free_port
from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.locust.engine import run_locust
from capplan.loadtest.run import RunResult
from capplan.loadtest.scenario import build_config
from reference_server.emulated import EmulatedBackend

from ..conftest import ServerFactory

pytestmark = pytest.mark.slow


def _both(url: str, out: Path, **overrides: Any) -> tuple[RunResult, RunResult]:
    values: dict[str, Any] = {"url": url, "prompt_tokens": 8, "max_tokens": 2, **overrides}
    config = build_config({}, values)
    httpx_run = run_load(config, out_dir=out / "httpx", handle_signals=False, reports=False)
    return httpx_run, run_locust(config, out_dir=out / "locust", reports=False)


def test_both_engines_extend_a_step_whose_requests_outlast_it(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    # 2-second requests, a 1-second step with 0.5 s of warmup, 2 users: the first round is
    # all warmup and ends after the step; a second round is sent to measure 2 requests.
    with emulated_server(ttft_ms=1000, tpot_ms=1000) as url:
        h, lo = _both(url, tmp_path, concurrency="2", duration="1s", warmup="0.5s")
    for run in (h, lo):
        window = run.summary["window"]
        assert window["extended"] and window["extension_requests"] == 2, window
        assert run.summary["requests"]["total"] == 2 and run.summary["requests"]["ok"] == 2
        assert run.summary["requests"]["warmup_excluded"] == 2
    assert sorted(r.request_id for r in h.records) == sorted(r.request_id for r in lo.records)


def test_both_engines_extend_an_open_loop_along_the_same_schedule(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, tpot_ms=0) as url:
        h, lo = _both(url, tmp_path, rate="2", arrival="constant", duration="1s", warmup="1s")
    assert h.summary["window"] == {**lo.summary["window"], "ran_s": h.summary["window"]["ran_s"]}
    assert h.summary["window"]["extension_requests"] == 1
    assert sorted(r.request_id for r in h.records) == sorted(r.request_id for r in lo.records)


def test_both_engines_trim_a_warmup_given_in_requests_per_user(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, tpot_ms=0) as url:
        h, lo = _both(url, tmp_path, concurrency="3", requests=9, warmup="1r")
    for run in (h, lo):
        assert run.summary["requests"]["warmup_excluded"] == 3
        assert run.summary["requests"]["total"] == 6


def test_both_engines_stop_on_an_all_400_target_with_the_servers_message(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(max_context=80) as url:
        h, lo = _both(url, tmp_path, concurrency="4", duration="10s", prompt_tokens=479)
    for run in (h, lo):
        assert run.stopped is not None
        assert "over the model's context of 80 tokens" in run.stopped["reason"]
        assert run.summary["stopped"] == run.stopped
        assert 5 <= len(run.records) < 100
        assert run.summary["ended_at"] - run.summary["started_at"] < 5.0


def test_both_engines_back_off_from_a_server_at_capacity(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    backends: list[EmulatedBackend] = []
    with emulated_server(ttft_ms=1, max_concurrent=1, queue_size=0, backend_out=backends) as url:
        backends[0].hold()  # one held request keeps the only slot: the rest get 503
        try:
            h, lo = _both(url, tmp_path, concurrency="3", duration="2s", timeout="3s")
        finally:
            backends[0].release()
    for run in (h, lo):
        retries = run.summary["retries"]
        assert retries["refused"] >= 2 and retries["backoffs"] >= 2, retries
        assert len(run.records) <= 3 * (2 + 1)  # a 1 s Retry-After: about one send a second
        assert "Retry-After" in run.summary["load_model_run"]["how"]


def test_the_locust_engine_refuses_a_dead_port_before_starting(tmp_path: Path) -> None:
    config = build_config({}, {"url": f"http://127.0.0.1:{free_port()}", "requests": 2})
    with pytest.raises(TargetError, match="nothing answers"):
        run_locust(config, out_dir=tmp_path, reports=False)
    assert not (tmp_path / "locust").exists()
