"""Plan numbers checked against closed-form queueing results."""

from __future__ import annotations

import math

import pytest

from capplan.errors import InputError
from capplan.planning.plan import ServiceProfile, plan_replicas, predict
from capplan.planning.queueing import erlang_c, mgc_tail
from capplan.regression.thresholds import parse_threshold


def _erlang_c_closed_form(c: int, a: float) -> float:
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize(("c", "a"), [(1, 0.5), (3, 2.0), (4, 3.3), (10, 8.0), (40, 35.0)])
def test_erlang_c_equals_the_closed_form(c: int, a: float) -> None:
    assert erlang_c(c, a) == pytest.approx(_erlang_c_closed_form(c, a), rel=1e-12)


def test_erlang_c_textbook_value() -> None:
    assert erlang_c(3, 2.0) == pytest.approx(4 / 9)


def test_mm1_wait_is_the_closed_form() -> None:
    # M/M/1, lambda 0.8, mu 1: P(wait) = rho, mean wait = rho / (mu - lambda) = 4 s,
    # P(W > t) = rho * exp(-(mu - lambda) t) so the 95th percentile is ln(0.8 / 0.05) / 0.2.
    tail = mgc_tail(1, 0.8, 1.0, service_cv2=1.0)
    assert tail.p_wait == pytest.approx(0.8)
    assert tail.mean_wait_s == pytest.approx(4.0)
    assert tail.wait_quantile_s(0.95) == pytest.approx(math.log(16) / 0.2)


def test_deterministic_service_halves_the_mean_wait() -> None:
    exponential = mgc_tail(4, 3.0, 1.0, service_cv2=1.0)
    fixed = mgc_tail(4, 3.0, 1.0, service_cv2=0.0)
    assert fixed.mean_wait_s == pytest.approx(exponential.mean_wait_s / 2)


def _profile(slots: int = 4, service_s: float = 1.0, cv2: float = 1.0) -> ServiceProfile:
    figures = {"p95_ttft_ms": 200.0, "p95_e2e_ms": 1000.0, "p50_tpot_ms": 30.0, "error_rate": 0.0}
    return ServiceProfile(slots, service_s, cv2, figures, "test")


def test_plan_picks_the_fewest_replicas_meeting_the_tail_slo() -> None:
    # 10 req/s, +20% headroom = 12 req/s; a replica of 4 slots x 1 s serves 4 req/s.
    slo = parse_threshold("p95(ttft)<700ms")  # at most 500 ms of queue wait at p95
    plan = plan_replicas(_profile(), 10.0, [slo], headroom=0.2, gpus_per_replica=2)
    n = plan.replicas
    assert n is not None
    # Closed form for the chosen and the next smaller count (M/M/c per replica).
    for k, should_pass in ((n, True), (n - 1, False)):
        lam = 12.0 / k
        c_wait = _erlang_c_closed_form(4, lam * 1.0)
        wait_p95 = max(0.0, math.log(c_wait / 0.05) / (4 - lam)) if lam < 4 else math.inf
        assert (200.0 + 1000.0 * wait_p95 < 700.0) is should_pass
        option = predict(_profile(), k, 12.0, [slo])
        if math.isfinite(wait_p95):
            assert option.predictions[0].wait_ms == pytest.approx(1000.0 * wait_p95)
    assert plan.gpus == 2 * n
    assert plan.design_rps == pytest.approx(12.0)
    assert plan.utilization_at_target == pytest.approx(10.0 / (4 * n))


def test_a_slo_the_service_itself_breaks_is_unattainable() -> None:
    plan = plan_replicas(_profile(), 10.0, [parse_threshold("p50(tpot)<20")])
    assert plan.replicas is None
    assert "lower the concurrency" in plan.unattainable[0]


def test_plan_rejects_a_zero_rate() -> None:
    with pytest.raises(InputError):
        plan_replicas(_profile(), 0.0, [parse_threshold("p95(ttft)<1s")])


@pytest.mark.parametrize("cv2", [0.0, 1.0, 2.0])
def test_more_headroom_or_traffic_never_means_fewer_replicas(cv2: float) -> None:
    profile = _profile(slots=3, service_s=2.0, cv2=cv2)
    slo = parse_threshold("p95(ttft)<1.5s")
    by_headroom = [
        plan_replicas(profile, 7.0, [slo], headroom=h / 20).replicas for h in range(0, 21)
    ]
    assert all(n is not None for n in by_headroom)
    assert by_headroom == sorted(by_headroom)  # type: ignore[type-var]
    by_rate = [plan_replicas(profile, r, [slo], headroom=0.2).replicas for r in (1, 2, 5, 9, 30)]
    assert by_rate == sorted(by_rate) and by_rate[0] != by_rate[-1]  # type: ignore[type-var]


def test_estimate_mode_uses_the_estimators_recommended_concurrency() -> None:
    from capplan.commands.plan import _profile_from_estimate
    from capplan.estimate.estimator import EstimateRequest, estimate
    from capplan.estimate.gpu_spec import resolve_gpu
    from capplan.estimate.model_spec import resolve_model

    # The plan sizes on the estimator's recommended max_concurrent (with the bound that set it),
    # and its service time is the estimator's own at that concurrency.
    expected = estimate(
        EstimateRequest(resolve_gpu("a100-80"), resolve_model("llama-3.1-8b"), 512, 256)
    )
    profile = _profile_from_estimate("a100-80", "llama-3.1-8b", None, 512, 256, None)
    assert profile.slots == expected.settings.max_concurrent == expected.concurrency
    assert expected.concurrency_bound in profile.source and "uncalibrated" in profile.source
    assert profile.service_time_s == pytest.approx(
        expected.timing.request_s_at_concurrency, rel=0.02
    )


def test_the_request_overhead_comes_before_prefill_or_the_step_it_waits_for() -> None:
    from capplan.planning.plan import profile_from_timing

    # As the estimate and the emulated backend: overhead + max(prefill, step), never
    # max(overhead + prefill, step), which hides the overhead behind a long step.
    profile = profile_from_timing(
        slots=2, prompt_tokens=10, output_tokens=3, prefill_ms=1.0, overhead_ms=5.0,
        decode_step_ms=lambda kv_tokens: 10.0, source="test",
    )  # fmt: skip
    assert profile.figures["p50_ttft_ms"] == pytest.approx(15.0)
    assert profile.service_time_s == pytest.approx((15.0 + 2 * 10.0) / 1000)
