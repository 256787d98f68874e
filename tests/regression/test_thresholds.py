from __future__ import annotations

import pytest

from capplan.errors import InputError
from capplan.loadtest.summary_model import RunSummary
from capplan.regression.thresholds import ThresholdResult, all_passed, parse_threshold
from capplan.regression.thresholds import evaluate as evaluate_summary


def evaluate(summary: dict[str, object], expressions: list[str]) -> list[ThresholdResult]:
    """The thresholds judged against a summary.json dict, read through the model."""
    return evaluate_summary(RunSummary.from_dict(summary), expressions)


def _summary(**over: object) -> dict[str, object]:
    summary: dict[str, object] = {
        "requests": {"total": 200, "ok": 198, "failed": 2},
        "error_rate": 0.01,
        "ttft_ms": {"p50": 120.0, "p95": 480.0, "p99": 700.0, "mean": 150.0},
        "e2e_ms": {"p50": 4000.0, "p95": 9500.0},
        "throughput": {"requests_per_s": 3.0, "output_tokens_per_s": 400.0},
    }
    summary.update(over)
    return summary


def test_units_convert_to_the_metric_unit() -> None:
    assert parse_threshold("p95(e2e)<10s").limit == 10_000
    assert parse_threshold("p95(e2e)<10s").metric == "p95_e2e_ms"
    assert parse_threshold("p95(ttft_ms)<500").limit == 500
    assert parse_threshold("p95(ttft) < 250ms").limit == 250
    assert parse_threshold("error_rate<1%").limit == pytest.approx(0.01)
    assert parse_threshold("median(tpot)<=40").metric == "p50_tpot_ms"
    assert parse_threshold("tokens_per_s>=100").metric == "output_tokens_per_s"


def test_evaluate_reports_pass_and_fail_with_actual_values() -> None:
    results = evaluate(
        _summary(), ["p95(ttft_ms)<500", "p99(ttft)<0.5s", "error_rate<1%", "rps>2.5"]
    )
    assert [r.passed for r in results] == [True, False, False, True]
    assert results[1].actual == 700.0
    assert results[2].actual == pytest.approx(0.01)  # 1% is not < 1%
    assert not all_passed(results)


def test_error_rate_is_derived_from_request_counts_when_absent() -> None:
    summary = _summary()
    del summary["error_rate"]
    (result,) = evaluate(summary, ["error_rate<0.02"])
    assert result.actual == pytest.approx(0.01) and result.passed


def test_a_missing_figure_fails_instead_of_passing() -> None:
    (result,) = evaluate(_summary(ttft_ms={"p95": None}), ["p95(ttft)<500"])
    assert result.actual is None and not result.passed


def test_a_ladder_is_judged_step_by_step() -> None:
    steps = [
        {"step": "concurrency=1", **_summary()},
        {"step": "concurrency=8", **_summary(ttft_ms={"p95": 900.0})},
    ]
    summary = {"requests": {"total": 400, "ok": 396, "failed": 4}, "steps": steps}
    results = evaluate(summary, ["p95(ttft)<500"])
    assert [(r.step, r.passed) for r in results] == [
        ("concurrency=1", True),
        ("concurrency=8", False),
    ]


@pytest.mark.parametrize(
    ("text", "metric", "limit"),
    [
        ("throughput.requests_per_s>2.5", "requests_per_s", 2.5),
        ("throughput.output_tokens_per_s>=100", "output_tokens_per_s", 100),
        ("goodput.requests_per_s>1", "goodput_requests_per_s", 1),
        ("goodput.fraction>=99%", "goodput_fraction", 0.99),
        ("requests.failed<=0", "failed", 0),
        ("p99(generator_lag)<10ms", "p99_generator_lag_ms", 10),
        ("p95(latency)<1s", "p95_latency_ms", 1000),
    ],
)
def test_every_figure_docs_metrics_names_parses(text: str, metric: str, limit: float) -> None:
    threshold = parse_threshold(text)
    assert (threshold.metric, threshold.limit) == (metric, pytest.approx(limit))


@pytest.mark.parametrize(
    "text",
    [
        "p95(ttft)",
        "p95(ttft)<fast",
        "error_rate<5ms",
        "p95(e2e)<10%",
        "p42x(ttft)<1",
        "p95(tfft)<500",
        "eror_rate<1%",
    ],
)
def test_bad_expressions_raise_input_error(text: str) -> None:
    with pytest.raises(InputError):
        parse_threshold(text)
