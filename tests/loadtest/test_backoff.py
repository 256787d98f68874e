"""Refused requests (429/503): closed-loop users wait and resend as the OpenAI clients do;
open-loop arrivals are never resent. Over real HTTP against the emulated reference server."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from capplan.loadtest.backoff import Backoff
from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.run import RunResult, load_scenario
from reference_server.emulated import EmulatedBackend

from .conftest import ServerFactory


def _run(url: str, out: Path, **overrides: Any) -> RunResult:
    values: dict[str, Any] = {"url": url, "prompt_tokens": 8, "max_tokens": 2, "concurrency": 1}
    values.update(overrides)
    return run_load(load_scenario(None, values), out_dir=out, handle_signals=False, reports=False)


def _by_send(records: list[RequestRecord]) -> list[RequestRecord]:
    return sorted(records, key=lambda r: r.send)


def test_the_backoff_follows_the_openai_clients_schedule() -> None:
    refused = RequestRecord(request_id="r", status=503)
    user = Backoff(max_retries=2, seed="s0-0")
    waits = [user.after(refused)[0] for _ in range(6)]
    # 0.5 s doubling to 8 s, each shortened by up to a quarter (jitter).
    for wait, full in zip(waits, (0.5, 1, 2, 4, 8, 8), strict=True):
        assert 0.75 * full <= wait <= full
    assert user.after(RequestRecord(request_id="r", status=429, retry_after_s=3.0)) == (3.0, True)
    assert user.after(RequestRecord(request_id="r", status=429, retry_after_s=600))[0] == 60.0
    assert user.after(RequestRecord(request_id="r", status=503, retry=2))[1] is False  # gave up
    assert user.after(RequestRecord(request_id="r", status=200)) == (0.0, False)
    assert user.refused_in_a_row == 0  # an answer resets the backoff
    assert user.after(RequestRecord(request_id="r", status=500)) == (0.0, False)


def test_a_refused_user_waits_the_retry_after_and_resends_the_same_request(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, rate_limit="1/second") as url:
        result = _run(url, tmp_path, duration="2.5s")
    records = _by_send(result.records)
    refused = [r for r in records if r.status == 429]
    assert refused and all(r.retry_after_s and r.backoff_s for r in refused)
    for before, after in itertools.pairwise(records):
        if before.status == 429:
            assert before.retry_after_s is not None
            assert after.send - before.end >= before.retry_after_s - 0.01
            # The same request again: its id and prompt, one more retry.
            assert after.request_id.split(".")[0] == before.request_id.split(".")[0]
            assert after.retry == before.retry + 1
    # One worker, one request allowed a second: a handful of sends, not a flood of 429s.
    assert len(records) <= 8
    retries = result.summary["retries"]
    assert retries["refused"] == len(refused) and retries["backoffs"] == len(refused)
    assert retries["resent"] == sum(1 for r in records if r.retry)
    assert any("backed off" in note for note in result.summary["notes"])
    assert "Retry-After" in result.summary["load_model_run"]["how"]


def test_with_no_backoff_a_refused_user_resends_at_once(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, rate_limit="1/second") as url:
        result = _run(url, tmp_path, duration="0.5s", backoff=False)
    assert result.summary["requests"]["by_status"]["429"] >= 10
    assert result.summary["retries"]["backoffs"] == 0
    assert any("--no-backoff" in note for note in result.summary["notes"])


def test_the_wait_ends_with_the_steps_window(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    # Retry-After is about a minute here; the step lasts one second and must not run past it.
    with emulated_server(ttft_ms=1, rate_limit="1/minute") as url:
        result = _run(url, tmp_path, duration="1s")
    assert [r.status for r in _by_send(result.records)] == [200, 429]
    refused = result.records[-1]
    assert refused.retry_after_s is not None and refused.retry_after_s > 30
    assert refused.backoff_s is not None and refused.backoff_s < 1.5  # cut at the step's end
    assert result.summary["ended_at"] - result.summary["started_at"] < 10


def test_a_503_server_gets_backoff_from_closed_loop_users_and_none_from_open_loop(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    # One slot and no queue, held by the first request until the end of the test: every other
    # request is answered 503 with Retry-After 1 s, as a server at capacity answers.
    backends: list[EmulatedBackend] = []
    with emulated_server(ttft_ms=1, max_concurrent=1, queue_size=0, backend_out=backends) as url:
        backends[0].hold()
        try:
            # The held request times out at 4 s: the closed step's last answer. Its slot is then
            # free, and the open loop's first arrival takes it (and times out at 2 s).
            closed = _run(url, tmp_path / "closed", concurrency="4", duration="3s", timeout="4s")
            opened = _run(
                url, tmp_path / "open", concurrency=None, rate="20", arrival="constant",
                duration="1s", timeout="2s",
            )  # fmt: skip
        finally:
            backends[0].release()
    refused = [r for r in closed.records if r.status == 503]
    # Three users refused for 3 s, each waiting the 1 s Retry-After: about 3 sends a user,
    # where resending at once made thousands.
    assert refused and len(closed.records) <= 4 * (3 + 1)
    assert all(r.backoff_s for r in _by_send(refused)[:3])
    assert closed.summary["retries"]["resent"] >= 3
    # Open loop: every scheduled arrival once, refused ones not resent, no wait.
    assert len(opened.records) == 20
    assert opened.summary["requests"]["by_status"]["503"] >= 19
    assert all(r.retry == 0 and r.backoff_s is None for r in opened.records)
    retries = opened.summary["retries"]
    assert (retries["resent"], retries["backoffs"], retries["backoff_s"]) == (0, 0, 0)
    assert any("not resent" in note for note in opened.summary["notes"])
