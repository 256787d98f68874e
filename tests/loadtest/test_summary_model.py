"""The typed summary model: every summary.json `summarize` writes reads back and writes again
unchanged; old and partial files read with their figures and their steps' loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capplan.loadtest.record import RecordWriter, RequestRecord
from capplan.loadtest.report.build import REBUILT_NOTE, build_reports
from capplan.loadtest.scenario import LoadStep, build_config
from capplan.loadtest.selfcheck import loop_figures
from capplan.loadtest.server_view import attach_server_view
from capplan.loadtest.summary import (
    apply_engine_block,
    attach_load_model_runs,
    load_model_run,
    summarize,
)
from capplan.loadtest.summary_model import SCHEMA_VERSION, RunSummary
from capplan.loadtest.verdict import target_failure

BASELINE = Path(__file__).resolve().parents[2] / "reports" / "baselines" / "ci-smoke"
ENV = {"capplan": "test", "gpus": [{"index": 0, "name": "GPU", "memory_total_bytes": 1}]}


def _records(label: str, n: int = 12, *, t0: float = 0.0, scheduled: bool = False) -> list[Any]:
    records: list[RequestRecord] = []
    for i in range(n):
        send = t0 + i * 0.05
        if i == n - 1:  # one failure, so the error blocks are not empty
            records.append(
                RequestRecord(
                    f"{label}-{i}", step=label, send=send, end=send + 0.01, status=503,
                    error="http_error", error_detail='{"error": {"message": "busy"}}',
                )
            )  # fmt: skip
            continue
        chunks = [send + 0.02 + k * 0.005 for k in range(6)]
        records.append(
            RequestRecord(
                f"{label}-{i}", step=label, send=send, first_byte=chunks[0],
                first_token=chunks[0], end=chunks[-1], chunk_times=chunks, status=200,
                prompt_tokens=16, output_tokens=6, prompt_tokens_source="server",
                output_tokens_source="server", warmup=i == 0,
                intended_start=send - 0.001 * (i % 3) if scheduled else None,
            )
        )  # fmt: skip
    return records


def _config(**values: Any) -> Any:
    return build_config({"url": "http://a:1", "requests": 12, **values})


def _httpx_check(reasons: list[str] | None = None) -> dict[str, Any]:
    figures = loop_figures([0.1, 0.3, 0.2, 4.0], 0.12)
    return {**figures, "client_bound": bool(reasons), "reasons": reasons or []}


def _single() -> dict[str, Any]:
    records = _records("concurrency=2")
    summary = summarize(
        records,
        _config(concurrency=[2], slo={"ttft_ms": 500}),
        selfcheck={"concurrency=2": _httpx_check()},
        environment=ENV,
        run_id="single",
    )
    summary["started_at"], summary["ended_at"] = 1.0, 9.5
    attach_load_model_runs(summary, {"concurrency=2": load_model_run("httpx", "closed", "how")})
    counters = {"e2e_count": 0.0, "e2e_sum": 0.0, "output_tokens": 0.0}
    after = {"e2e_count": 11.0, "e2e_sum": 1.1, "output_tokens": 66.0}
    attach_server_view(summary, counters, after, records)
    return summary


def _ladder() -> dict[str, Any]:
    records = _records("concurrency=1") + _records("concurrency=4", t0=5.0)
    checks = {"concurrency=1": _httpx_check(), "concurrency=4": _httpx_check(["lagged"])}
    config = _config(concurrency=[1, 4])
    return summarize(records, config, selfcheck=checks, environment=ENV, interrupted=True)


def _open_ladder() -> dict[str, Any]:
    records = _records("rate=5", scheduled=True) + _records("rate=10", t0=5.0, scheduled=True)
    return summarize(records, _config(rate=[5, 10]), environment=ENV)


def _ramp() -> dict[str, Any]:
    config = _config(ramp="1:10", duration="5s")
    return summarize(_records("ramp=1-10", scheduled=True), config, environment=ENV)


def _locust() -> dict[str, Any]:
    check = {
        "workers": {"w1": loop_figures([0.2, 0.4], 0.3), "w2": {}},
        "client_bound": False,
        "reasons": [],
    }
    records = _records("concurrency=1") + _records("concurrency=4", t0=5.0)
    summary = summarize(
        records,
        _config(concurrency=[1, 4]),
        selfcheck={"concurrency=1": check, "concurrency=4": check},
        environment=ENV,
        engine="locust",
        run_id="locust",
    )
    block = {
        "version": "2.0",
        "runner": "local",
        "local_workers": 0,
        "remote_workers": 0,
        "steps": [
            {"step": "concurrency=1", "mode": "closed", "how": "1 user"},
            {"step": "concurrency=4", "mode": "closed", "how": "4 users", "problem": "late"},
        ],
    }
    apply_engine_block(summary, "locust", block)
    return summary


def _extended_and_stopped() -> dict[str, Any]:
    # Issue 12's blocks: refusals waited out and resent, an extension past the planned 0.5 s,
    # and a run stopped on a broken target.
    records = _records("concurrency=2")
    refused = records[-1]
    refused.backoff_s = 0.5
    records[-2].retry = 1
    for record in records[-3:]:
        record.extension = True
    config = _config(concurrency=[2], duration="0.5s", warmup="1r", min_requests=20)
    stopped = {"step": "concurrency=2", "reason": "the first 5 answers were all HTTP 400: no"}
    return summarize(records, config, environment=ENV, stopped=stopped)


def _partial_config() -> dict[str, Any]:
    # As benchmarks and tests call it: a config naming the steps only (no numeric load).
    return summarize(_records("concurrency=64"), {"steps": ["concurrency=64"]}, environment={})


def _rebuilt(tmp_path: Path) -> dict[str, Any]:
    run_dir = tmp_path / "run"
    records = _records("concurrency=1") + _records("concurrency=3", t0=5.0)
    with RecordWriter(run_dir / "requests.jsonl") as writer:
        for record in records:
            writer.write(record)
    summary = summarize(records, _config(concurrency=[1, 3]), environment=ENV, run_id="r")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    build_reports(run_dir, resummarize=True)
    rebuilt: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    assert rebuilt["rebuilt"] == REBUILT_NOTE
    return rebuilt


REAL = {
    "single step": _single,
    "ladder": _ladder,
    "open-loop ladder": _open_ladder,
    "ramp": _ramp,
    "locust block": _locust,
    "extended, refused and stopped": _extended_and_stopped,
    "config without numbers": _partial_config,
}


@pytest.mark.parametrize("build", REAL.values(), ids=REAL.keys())
def test_every_summary_summarize_writes_round_trips_losslessly(build: Any) -> None:
    summary = build()
    assert RunSummary.from_dict(summary).to_dict() == summary
    on_disk = json.loads(json.dumps(summary))
    assert RunSummary.from_dict(on_disk).to_dict() == on_disk


def test_a_rebuilt_summary_round_trips_losslessly(tmp_path: Path) -> None:
    rebuilt = _rebuilt(tmp_path)
    assert RunSummary.from_dict(rebuilt).to_dict() == rebuilt


def test_each_step_carries_its_load_as_numbers_from_the_config() -> None:
    ladder = RunSummary.from_dict(_ladder())
    assert [s.load for s in ladder.steps] == [
        LoadStep("closed", concurrency=1),
        LoadStep("closed", concurrency=4),
    ]
    assert ladder.overall is not None and ladder.overall.load is None
    assert [s.load for s in RunSummary.from_dict(_open_ladder()).steps] == [
        LoadStep("open", rate=5.0),
        LoadStep("open", rate=10.0),
    ]
    ramp = _ramp()
    assert ramp["steps"][0]["load"] == {"kind": "ramp", "rate": 1.0, "ramp_to": 10.0}
    assert ramp["schema_version"] == SCHEMA_VERSION == "1.2"
    # A step the config does not describe has no load, rather than one guessed from its label.
    assert "load" not in _partial_config()["steps"][0]


def test_the_model_reads_the_figures_every_reader_uses() -> None:
    single = RunSummary.from_dict(_single())
    step = single.whole
    assert not single.is_ladder and step is single.steps[0]
    assert step.requests.total == 11 and step.requests.failed == 1
    assert step.requests.by_status == {"200": 10, "503": 1}
    assert step.requests.error_examples == {"http_error 503": "busy"}
    assert step.ttft_ms.value("p50") == pytest.approx(20.0)
    assert step.client is not None and step.client.loop.loop_cpu_fraction == 0.12
    assert single.server_view is not None and single.server_view.server.requests == 11
    assert single.config.concurrency == (2,) and single.config.slo.ttft_ms == 500.0
    ladder = RunSummary.from_dict(_ladder())
    assert ladder.whole is ladder.overall and not ladder.valid
    assert ladder.reasons[-1].startswith("interrupted")
    locust = RunSummary.from_dict(_locust())
    assert set(locust.engine_blocks) == {"locust"}
    assert locust.load_model_runs()["concurrency=4"].how == "4 users"
    assert "locust concurrency=4: late" in locust.reasons


def test_a_committed_baseline_of_schema_1_reads_with_its_loads_and_figures() -> None:
    old = json.loads((BASELINE / "summary.json").read_text())
    assert old["schema_version"] == 1
    summary = RunSummary.from_dict(old)
    assert [s.load for s in summary.steps] == [
        LoadStep("closed", concurrency=1),
        LoadStep("closed", concurrency=4),
    ]
    new = summary.to_dict()
    assert new["schema_version"] == SCHEMA_VERSION
    for old_step, new_step in zip(old["steps"], new["steps"], strict=True):
        added = {"load", "error_examples"}
        assert {k: v for k, v in new_step.items() if k not in added} == {
            k: (v | {"error_examples": {}} if k == "requests" else v) for k, v in old_step.items()
        }
    # Upgraded once, it then round-trips like any current summary.
    assert RunSummary.from_dict(new).to_dict() == new


def test_old_and_partial_files_read_without_made_up_figures() -> None:
    # A single-step block at the top level, no steps, labels only: loads come from the labels.
    partial = RunSummary.from_dict(
        {"step": "rate=2.5", "ttft_ms": {"p95": 480.0}, "goodput": 1.5, "reasons": ["x"]}
    )
    (step,) = partial.steps
    assert step.load == LoadStep("open", rate=2.5)
    assert step.ttft_ms.p95 == 480.0 and step.ttft_ms.p50 is None
    assert step.goodput.requests_per_s == 1.5  # the oldest shape: goodput as one number
    assert step.requests.total is None and step.error_rate is None
    assert not partial.valid  # not recorded: valid unless it gives reasons
    ladder = RunSummary.from_dict(
        {"requests": {"total": 4, "failed": 1}, "steps": [{"step": "a"}, {"step": "b"}]}
    )
    assert ladder.is_ladder and ladder.whole.requests.total == 4
    assert [s.load for s in ladder.steps] == [None, None]


def test_the_model_reads_a_steps_window_its_refusals_and_the_runs_stop() -> None:
    summary = RunSummary.from_dict(_extended_and_stopped())
    window, retries = summary.whole.window, summary.whole.retries
    assert window is not None and window.extended and window.extension_requests == 3
    assert window.planned_s == 0.5 and window.min_requests == 20 and window.measured == 11
    assert window.warmup == "1 request per user" and window.why is not None
    assert retries is not None and (retries.refused, retries.resent, retries.backoffs) == (1, 1, 1)
    assert summary.stopped is not None and summary.stopped.step == "concurrency=2"
    assert summary.reasons[-1] == summary.stopped.line and not summary.valid
    assert any(note.startswith("step extended: ") for note in summary.whole.notes)
    assert target_failure(summary, []) == (
        "the run stopped early in concurrency=2: the first 5 answers were all HTTP 400: no"
    )


def test_a_summary_before_schema_1_2_has_no_window_refusals_or_stop() -> None:
    old = json.loads((BASELINE / "summary.json").read_text())
    summary = RunSummary.from_dict(old)
    assert summary.stopped is None
    assert all(s.window is None and s.retries is None for s in summary.steps)
    assert not {"window", "retries", "stopped"} & set(summary.to_dict())
