"""Replicas (and GPUs) for a target arrival rate, with the queue's tail and stated headroom.

A replica's service profile comes from a measured run at a known concurrency (or the highest
safe point of a sweep) or from the estimator's service timing. Each replica is an M/G/c queue
(`queueing.mgc_tail`) fed a Poisson share rate/N of the traffic (a load balancer spreading
requests at random); the plan is the smallest N whose predicted figures meet every SLO at the
target rate times (1 + headroom).

Predicted latency quantiles add the wait's quantile to the service's quantile: an upper bound
(the two rarely peak together), so the plan errs on the side of one replica too many.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capplan.errors import InputError
from capplan.estimate.roofline import first_token_ms
from capplan.loadtest.summary_model import RunSummary
from capplan.planning.queueing import QueueTail, mgc_tail
from capplan.regression.thresholds import Threshold

_MAX_REPLICAS = 100_000
# Figures a queue wait adds to; TPOT and ITL are paced by decoding, after the wait.
_WAIT_AFFECTED = ("ttft_ms", "e2e_ms", "latency_ms")


@dataclass(frozen=True)
class ServiceProfile:
    """How one replica serves: slots, time a request holds one, and the latency it sees unqueued.

    `figures` are flat summary names (`p95_ttft_ms`, `p50_tpot_ms`, `error_rate`, ...) measured or
    estimated at `slots` concurrent requests with no queueing.
    """

    slots: int
    service_time_s: float
    service_cv2: float
    figures: Mapping[str, float]
    source: str

    @property
    def capacity_rps(self) -> float:
        """Requests per second one replica completes with every slot busy."""
        return self.slots / self.service_time_s


@dataclass(frozen=True)
class SloPrediction:
    threshold: Threshold
    service_value: float | None  # the figure without queueing
    wait_ms: float  # queue wait added to it
    predicted: float | None
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class ReplicaOption:
    replicas: int
    tail: QueueTail
    predictions: tuple[SloPrediction, ...]

    @property
    def passed(self) -> bool:
        return self.tail.stable and all(p.passed for p in self.predictions)


@dataclass(frozen=True)
class ReplicaPlan:
    target_rps: float
    headroom: float
    design_rps: float  # target * (1 + headroom): what the plan is sized for
    profile: ServiceProfile
    gpus_per_replica: int
    chosen: ReplicaOption | None  # None when no replica count meets the SLOs
    options: tuple[ReplicaOption, ...] = field(default_factory=tuple)  # around the choice
    unattainable: tuple[str, ...] = ()  # SLOs no replica count can meet, with why

    @property
    def replicas(self) -> int | None:
        return None if self.chosen is None else self.chosen.replicas

    @property
    def gpus(self) -> int | None:
        return None if self.chosen is None else self.chosen.replicas * self.gpus_per_replica

    @property
    def utilization_at_target(self) -> float | None:
        if self.chosen is None:
            return None
        return self.target_rps / (self.chosen.replicas * self.profile.capacity_rps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; an unstable option's infinite wait is written as null."""
        profile = self.profile
        return {
            "target_rps": self.target_rps,
            "headroom": self.headroom,
            "design_rps": self.design_rps,
            "replicas": self.replicas,
            "gpus_per_replica": self.gpus_per_replica,
            "gpus": self.gpus,
            "utilization_at_target": self.utilization_at_target,
            "unattainable": list(self.unattainable),
            "profile": {
                "slots": profile.slots,
                "service_time_s": profile.service_time_s,
                "service_cv2": profile.service_cv2,
                "capacity_rps": profile.capacity_rps,
                "source": profile.source,
            },
            "options": [
                {
                    "replicas": o.replicas,
                    "utilization": o.tail.utilization,
                    "p_wait": o.tail.p_wait,
                    "passed": o.passed,
                    "predictions": [
                        {
                            "slo": p.threshold.expression,
                            "service": p.service_value,
                            "wait_ms": _finite(p.wait_ms),
                            "predicted": _finite(p.predicted),
                            "passed": p.passed,
                        }
                        for p in o.predictions
                    ],
                }
                for o in self.options
            ],
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def predict(
    profile: ServiceProfile, replicas: int, rate_rps: float, slos: Sequence[Threshold]
) -> ReplicaOption:
    """Predicted figures for `replicas` replicas sharing `rate_rps` Poisson arrivals."""
    tail = mgc_tail(profile.slots, rate_rps / replicas, profile.service_time_s, profile.service_cv2)
    return ReplicaOption(replicas, tail, tuple(_predict_slo(profile, tail, s) for s in slos))


def _predict_slo(profile: ServiceProfile, tail: QueueTail, slo: Threshold) -> SloPrediction:
    stat, _, metric = slo.metric.partition("_")
    service = profile.figures.get(slo.metric)
    if metric in _WAIT_AFFECTED:
        if not tail.stable:
            wait_ms = math.inf
        elif stat == "mean":
            wait_ms = tail.mean_wait_s * 1000.0
        elif stat.startswith("p") and stat[1:].isdigit():
            wait_ms = tail.wait_quantile_s(float(stat[1:]) / 100.0) * 1000.0
        else:
            return SloPrediction(slo, service, 0.0, None, False, f"cannot predict {stat}")
    else:
        wait_ms = 0.0
    if service is None:
        return SloPrediction(slo, None, wait_ms, None, False, "no such figure in the profile")
    predicted = service + wait_ms
    return SloPrediction(slo, service, wait_ms, predicted, slo.holds(predicted))


def plan_replicas(
    profile: ServiceProfile,
    target_rps: float,
    slos: Sequence[Threshold],
    *,
    headroom: float = 0.2,
    gpus_per_replica: int = 1,
) -> ReplicaPlan:
    """The fewest replicas meeting every SLO at target * (1 + headroom) requests/s."""
    if target_rps <= 0:
        raise InputError("--rate must be above 0 requests/s")
    if headroom < 0:
        raise InputError("--headroom must be 0 or more (0.2 sizes for 20% above the rate)")
    if profile.slots < 1 or profile.service_time_s <= 0:
        raise InputError("the service profile needs at least one slot and a positive service time")
    design = target_rps * (1.0 + headroom)
    unattainable = tuple(_unattainable(profile, slos))
    if unattainable:
        return ReplicaPlan(
            target_rps, headroom, design, profile, gpus_per_replica, None, (), unattainable
        )
    n = max(1, math.ceil(design / profile.capacity_rps))
    while True:
        option = predict(profile, n, design, slos)
        if option.passed:
            break
        n += 1
        if n > _MAX_REPLICAS:
            return ReplicaPlan(target_rps, headroom, design, profile, gpus_per_replica, None)
    around = [predict(profile, k, design, slos) for k in range(max(1, n - 2), n + 2)]
    return ReplicaPlan(
        target_rps, headroom, design, profile, gpus_per_replica, option, tuple(around)
    )


def _unattainable(profile: ServiceProfile, slos: Sequence[Threshold]) -> list[str]:
    """SLOs the service itself breaks: more replicas remove waiting, never slow decoding."""
    out = []
    for slo in slos:
        service = profile.figures.get(slo.metric)
        if service is None:
            out.append(f"{slo.expression}: the profile has no {slo.metric}")
        elif not slo.holds(service):
            out.append(
                f"{slo.expression}: {slo.metric} is {service:.4g} with no queueing at "
                f"{profile.slots} concurrent; lower the concurrency per replica"
            )
    return out


# --- profiles -------------------------------------------------------------------------------


def profile_from_run(
    summary: RunSummary,
    *,
    slots: int,
    e2e_ms: Sequence[float] = (),
    source: str = "measured run",
) -> ServiceProfile:
    """Profile from a run's summary at `slots` concurrency; `e2e_ms` samples give the variation."""
    from capplan.regression.metrics import flatten

    figures = flatten(summary.whole)
    mean_e2e = figures.get("mean_e2e_ms")
    if mean_e2e is None or mean_e2e <= 0:
        raise InputError("the run has no successful requests (no mean e2e_ms); pick another run")
    return ServiceProfile(slots, mean_e2e / 1000.0, service_cv2(e2e_ms), figures, source)


def service_cv2(values: Sequence[float]) -> float:
    """Squared coefficient of variation of service times; 1 (exponential) with too few."""
    n = len(values)
    if n < 2:
        return 1.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return var / (mean * mean) if mean > 0 else 1.0


def profile_from_timing(
    *,
    slots: int,
    prompt_tokens: int,
    output_tokens: int,
    prefill_ms: float,
    decode_step_ms: Any,
    source: str,
    overhead_ms: float = 0.0,
) -> ServiceProfile:
    """Deterministic profile from service timing with every slot busy (fixed lengths: cv2 = 0).

    `prefill_ms` is one prompt's prefill and `overhead_ms` the request's time before it (HTTP,
    tokenizing); `decode_step_ms(kv_tokens)` is the estimator's step time for the KV the batch
    holds; the batch holds `slots` requests half-way through their output on average.
    """
    if slots < 1 or output_tokens < 1:
        raise InputError("need at least one slot and one output token")
    ttft = first_token_ms(overhead_ms, prefill_ms, decode_step_ms(slots * prompt_tokens))
    step = decode_step_ms(int(slots * (prompt_tokens + output_tokens / 2)))
    e2e = ttft + (output_tokens - 1) * step
    figures: dict[str, float] = {"error_rate": 0.0}
    for stat in ("p50", "p90", "p95", "p99", "mean", "max"):
        figures[f"{stat}_ttft_ms"] = ttft
        figures[f"{stat}_tpot_ms"] = step
        figures[f"{stat}_itl_ms"] = step
        figures[f"{stat}_e2e_ms"] = e2e
        figures[f"{stat}_latency_ms"] = e2e
    figures["output_tokens_per_s"] = slots * output_tokens / (e2e / 1000.0)
    figures["requests_per_s"] = slots / (e2e / 1000.0)
    return ServiceProfile(slots, e2e / 1000.0, 0.0, figures, source)
