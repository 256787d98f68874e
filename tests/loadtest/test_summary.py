"""summary.json math from hand-built records."""

from __future__ import annotations

import json

import pytest

from capplan.loadtest.metrics import percentile
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.scenario import build_config
from capplan.loadtest.summary import summarize

ENV = {"capplan": "test"}


def _ok(
    send: float, ttft: float, gaps: list[float], *, step: str = "concurrency=1", **kw
) -> RequestRecord:
    times = [send + ttft]
    for gap in gaps:
        times.append(times[-1] + gap)
    return RequestRecord(
        request_id=f"r{send}",
        step=step,
        send=send,
        first_byte=send + ttft,
        first_token=send + ttft,
        end=times[-1],
        chunk_times=times,
        status=200,
        output_tokens=len(times),
        output_tokens_source="server",
        **kw,
    )


def _failed(
    send: float, status: int | None, error: str, step: str = "concurrency=1"
) -> RequestRecord:
    return RequestRecord(
        request_id=f"f{send}", step=step, send=send, end=send + 0.01, status=status, error=error
    )


def _config(**values):
    return build_config({"url": "http://a:1", "requests": 10, **values})


def test_ttft_tpot_itl_e2e_follow_their_definitions() -> None:
    records = [_ok(0.0, 0.1, [0.02, 0.04]), _ok(1.0, 0.3, [0.02, 0.02])]
    summary = summarize(records, _config(), environment=ENV)
    assert summary["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert summary["ttft_ms"]["max"] == pytest.approx(300.0)
    # TPOT = (E2E - TTFT) / (tokens - 1) = 60/2 and 40/2
    assert summary["tpot_ms"]["mean"] == pytest.approx(25.0)
    # ITL is every chunk gap: 20, 40, 20, 20
    assert summary["itl_ms"]["count"] == 4
    assert summary["itl_ms"]["mean"] == pytest.approx(25.0)
    assert summary["e2e_ms"]["max"] == pytest.approx(340.0)
    assert set(summary["ttft_ms"]) >= {"p50", "p90", "p95", "p99", "mean", "max"}


def test_failed_requests_are_counted_by_status_never_dropped() -> None:
    records = [
        _ok(0.0, 0.1, [0.01]),
        _failed(0.1, 503, "http_error"),
        _failed(0.2, 429, "http_error"),
        _failed(0.3, 503, "http_error"),
        _failed(0.4, None, "connect_error"),
    ]
    summary = summarize(records, _config(), environment=ENV)
    assert summary["requests"]["total"] == 5
    assert summary["requests"]["ok"] == 1
    assert summary["requests"]["failed"] == 4
    assert summary["requests"]["by_status"] == {"200": 1, "429": 1, "503": 2, "connect_error": 1}
    assert summary["error_rate"] == pytest.approx(0.8)
    assert summary["goodput"]["fraction"] == pytest.approx(0.2)


def test_warmup_requests_are_excluded_and_counted_apart() -> None:
    records = [_ok(0.0, 5.0, [0.01], warmup=True), _ok(1.0, 0.1, [0.01])]
    summary = summarize(records, _config(), environment=ENV)
    assert summary["requests"]["total"] == 1
    assert summary["requests"]["warmup_excluded"] == 1
    assert summary["ttft_ms"]["max"] == pytest.approx(100.0)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records = [_ok(0.0, 0.1, [0.01]), _ok(0.0, 0.6, [0.01]), _ok(0.0, 0.1, [0.5])]
    config = _config(slo={"ttft_ms": 500, "tpot_ms": 100})
    summary = summarize(records, config, environment=ENV)
    assert summary["goodput"]["fraction"] == pytest.approx(1 / 3)
    assert summary["goodput"]["slo"] == {"ttft_ms": 500.0, "tpot_ms": 100.0}


def test_open_loop_latency_counts_from_the_intended_start() -> None:
    late = _ok(1.0, 0.1, [0.01], intended_start=0.5)
    summary = summarize([late], _config(), environment=ENV)
    assert summary["e2e_ms"]["max"] == pytest.approx(110.0)
    assert summary["latency_ms"]["max"] == pytest.approx(610.0)
    assert summary["generator_lag_ms"]["max"] == pytest.approx(500.0)
    assert not summary["valid"]
    assert any("behind the arrival schedule" in r for r in summary["reasons"])


def test_a_ladder_has_one_block_per_step_and_an_overall_block() -> None:
    config = _config(concurrency=[1, 4])
    records = [
        _ok(0.0, 0.1, [0.01], step="concurrency=1"),
        _ok(1.0, 0.2, [0.01], step="concurrency=4"),
    ]
    summary = summarize(records, config, environment=ENV)
    assert [s["step"] for s in summary["steps"]] == ["concurrency=1", "concurrency=4"]
    assert summary["steps"][1]["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert summary["overall"]["requests"]["total"] == 2
    assert "ttft_ms" not in summary  # top-level figures would mix rungs
    json.dumps(summary)


def test_client_bound_selfcheck_marks_the_run_invalid() -> None:
    check = {"concurrency=1": {"client_bound": True, "reasons": ["client loop used 97% of a core"]}}
    summary = summarize([_ok(0.0, 0.1, [0.01])], _config(), selfcheck=check, environment=ENV)
    assert summary["valid"] is False
    assert "97%" in summary["reasons"][0]


def test_required_summary_fields_are_present() -> None:
    summary = summarize([_ok(0.0, 0.1, [0.01])], _config(seed=5), environment=ENV)
    for key in (
        "schema_version",
        "config",
        "environment",
        "requests",
        "throughput",
        "goodput",
        "valid",
        "reasons",
    ):
        assert key in summary
    assert summary["config"]["seed"] == 5
    assert set(summary["throughput"]) >= {"requests_per_s", "output_tokens_per_s"}


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)


def test_the_first_failure_of_each_kind_is_kept_readable() -> None:
    refused = _failed(0.1, 503, "http_error")
    refused.error_detail = json.dumps({"error": {"message": "server busy: 3 running"}})
    html = _failed(0.2, 502, "http_error")
    html.error_detail = "<html>\n<h1>502 Bad Gateway</h1>\n</html>"
    later = _failed(0.3, 503, "http_error")
    later.error_detail = json.dumps({"error": {"message": "another"}})
    records = [_ok(0.0, 0.1, [0.01]), refused, html, later, _failed(0.4, None, "timeout")]
    summary = summarize(records, _config(), environment=ENV)
    assert summary["requests"]["error_examples"] == {
        "http_error 502": "<html> <h1>502 Bad Gateway</h1> </html>",
        "http_error 503": "server busy: 3 running",
        "timeout": "",
    }
