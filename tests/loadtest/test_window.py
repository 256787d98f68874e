"""A step's window: warmup by time or by requests, and the extension that makes a step whose
requests outlast it measure something. Over real HTTP against the emulated reference server
(exact timing), plus the window's rules on their own."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from capplan.errors import InputError
from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.run import RunResult, load_scenario
from capplan.loadtest.scenario import build_config
from capplan.loadtest.window import StepWindow, WindowPlan

from .conftest import ServerFactory


def _run(url: str, out: Path, **overrides: Any) -> RunResult:
    values: dict[str, Any] = {"url": url, "prompt_tokens": 8, "max_tokens": 2, **overrides}
    return run_load(load_scenario(None, values), out_dir=out, handle_signals=False, reports=False)


@pytest.mark.slow
def test_8s_requests_in_a_4s_step_with_1s_warmup_at_concurrency_4_measure_4_requests(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    # Every request takes 8 s (1 s to the first token, then 7 tokens 1 s apart): the four
    # first requests start inside the warmup and end after the step's 4 s.
    with emulated_server(ttft_ms=1000, tpot_ms=1000) as url:
        result = _run(url, tmp_path, concurrency="4", duration="4s", warmup="1s", max_tokens=8)
    step = result.summary
    assert step["requests"]["warmup_excluded"] == 4
    assert step["requests"]["total"] >= 4 and step["requests"]["ok"] >= 4
    window = step["window"]
    assert window["extended"] and window["extension_requests"] == 4
    assert window["min_requests"] == 4 and window["planned_s"] == 4.0
    assert 15.5 < window["ran_s"] < 4 + 120  # two rounds of 8 s; never past one timeout
    assert "fewer than --min-requests 4" in window["why"]
    assert any(note.startswith("step extended") for note in step["notes"])
    extension = [r for r in result.records if r.extension]
    assert len(extension) == 4 and not any(r.warmup for r in extension)
    # Measured, not all warmup; on a loaded machine the client's self-check may still (rightly)
    # call the figures invalid for its own lag, which is not what this test is about.
    assert not any("warmup" in reason for reason in step["reasons"]), step["reasons"]


def test_warmup_by_requests_trims_each_users_first_request(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, tpot_ms=0) as url:
        result = _run(url, tmp_path, concurrency="2", requests=6, warmup="1r")
    warm = [r for r in result.records if r.warmup]
    assert len(warm) == 2 and {r.request_id for r in warm} == {"s0-0", "s0-1"}
    assert result.summary["requests"]["total"] == 4
    assert result.summary["window"]["warmup"] == "1 request per user"


def test_a_ladders_default_warmup_is_each_users_first_request(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=1, tpot_ms=0) as url:
        result = _run(url, tmp_path, concurrency="1,3", requests=6)
    assert result.summary["config"]["warmup_requests"] == 1
    warm = [s["requests"]["warmup_excluded"] for s in result.summary["steps"]]
    assert warm == [1, 3]
    single = build_config({}, {"url": url, "concurrency": "3", "requests": 6})
    assert (single.warmup_requests, single.warmup_s) == (0, 0.0)  # one step: none by default


def test_warmup_reads_a_duration_or_requests_per_user() -> None:
    def config(warmup: str) -> tuple[float, int]:
        built = build_config({}, {"url": "http://h", "requests": 1, "warmup": warmup})
        return built.warmup_s, built.warmup_requests

    assert config("2s") == (2.0, 0)
    assert config("500ms") == (0.5, 0)
    assert config("1r") == (0.0, 1)
    assert config("3 requests") == (0.0, 3)
    with pytest.raises(InputError, match="1r"):
        config("two")


def test_the_extension_stops_at_the_minimum_and_at_one_timeout_past_the_planned_end() -> None:
    window = StepWindow(WindowPlan(duration_s=4.0, min_requests=2, timeout_s=10.0), start=0.0)
    planned = extra = itertools.count()
    assert window.next_request(1.0, planned, extra) == (0, False)
    window.sent(warmup=False)
    # Past the planned end with one measured request in flight: one more is needed.
    assert window.next_request(5.0, planned, extra) == (1, True)
    window.sent(warmup=False)
    assert window.next_request(5.0, planned, extra) is None  # two in flight: enough
    window.finished(warmup=False)
    window.finished(warmup=False)
    assert window.next_request(6.0, planned, extra) is None
    late = StepWindow(WindowPlan(duration_s=4.0, min_requests=2, timeout_s=10.0), start=0.0)
    assert late.next_request(13.9, planned, extra) is not None
    assert late.next_request(14.0, planned, extra) is None  # one timeout past the planned end
    assert late.remaining_s(14.0) == 0.0


def test_warmup_requests_never_count_toward_the_minimum() -> None:
    window = StepWindow(WindowPlan(duration_s=1.0, warmup_s=5.0, min_requests=1), start=0.0)
    assert window.is_warmup(0, at=4.9) and not window.is_warmup(0, at=5.0)
    window.sent(warmup=True)
    window.finished(warmup=True)
    assert window.extend(now=2.0)  # still nothing measured


def test_an_open_loop_with_no_arrival_after_its_warmup_goes_on_at_its_rate(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    # Arrivals at 0 and 0.5 s, both inside the 1 s warmup: the schedule goes on at 2/s.
    with emulated_server(ttft_ms=1, tpot_ms=0) as url:
        result = _run(url, tmp_path, rate="2", arrival="constant", duration="1s", warmup="1s")
    window = result.summary["window"]
    assert (window["extended"], window["extension_requests"], window["measured"]) == (True, 1, 1)
    extension = [r for r in result.records if r.extension]
    assert len(extension) == 1 and extension[0].intended_start is not None
    starts = sorted(r.intended_start - result.records[0].intended_start for r in result.records)
    assert starts == pytest.approx([0.0, 0.5, 1.0], abs=1e-6)
