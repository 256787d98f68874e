"""`capplan calibrate`: measure a server's step costs and write a calibration profile.

A short ladder of closed-loop load points (prompt lengths at concurrency 1, then larger
batches) runs against any OpenAI-compatible server; or the records of a finished run are read
instead. From each point come the measured decode step (median time per output token at the
batch the server really ran) and, at concurrency 1, the time to the first token. The step model
(`calibration_fit`) is fitted to them with the model's own sizes from the estimator, and the
profile says which of floor, bandwidth, compute and overhead the points constrained.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capplan.errors import InputError
from capplan.estimate.calibration import CalibrationProfile
from capplan.estimate.roofline import Roofline
from capplan.loadtest.metrics import request_metrics
from capplan.loadtest.record import RequestRecord, read_records
from capplan.planning.calibration_fit import DecodePoint, PrefillPoint, fit

MIN_REQUESTS_PER_POINT = 3


@dataclass(frozen=True)
class LadderPoint:
    concurrency: int
    prompt_tokens: int

    @property
    def label(self) -> str:
        return f"c{self.concurrency}-p{self.prompt_tokens}"


def ladder(prompts: Sequence[int], concurrencies: Sequence[int]) -> list[LadderPoint]:
    """Every prompt length alone (prefill rate, floor), then each larger batch with the shortest
    and the longest prompt (bandwidth and compute under load)."""
    short, long = min(prompts), max(prompts)
    points = [LadderPoint(1, p) for p in sorted(set(prompts))]
    for c in sorted({c for c in concurrencies if c > 1}):
        points.append(LadderPoint(c, short))
        if long != short:
            points.append(LadderPoint(c, long))
    return points


@dataclass(frozen=True)
class MeasuredPoint:
    """One group of requests reduced to what the fit needs."""

    label: str
    requests: int
    batch: float  # median requests in flight while each decoded
    prompt_tokens: float
    output_tokens: float
    step_ms: float  # median gap between output chunks (robust to a preempted request)
    ttft_ms: float  # median time to first token


def measured_points(records: Iterable[RequestRecord]) -> list[MeasuredPoint]:
    """Records grouped by step, reduced to points; warmup and failed requests left out."""
    ok = [r for r in records if r.ok and not r.warmup and r.first_token is not None]
    by_step: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in ok:
        if r.output_tokens >= 2:
            by_step[r.step].append(r)
    points = []
    for label, group in by_step.items():
        if len(group) < MIN_REQUESTS_PER_POINT:
            continue
        metrics = [request_metrics(r) for r in group]
        # The median gap over every chunk of every request: one request slowed by a busy host
        # moves a median of per-request means far more than a median of all gaps.
        gaps = [
            gap for r, m in zip(group, metrics, strict=True) for gap in _token_gaps(r, m.itl_ms)
        ]
        tpots = [m.tpot_ms for m in metrics if m.tpot_ms is not None]
        points.append(
            MeasuredPoint(
                label=label,
                requests=len(group),
                batch=statistics.median(_in_flight(r, group) for r in group),
                prompt_tokens=statistics.median(r.prompt_tokens or 0 for r in group),
                output_tokens=statistics.median(r.output_tokens for r in group),
                step_ms=statistics.median(gaps) if gaps else statistics.median(tpots),
                ttft_ms=statistics.median(m.ttft_ms for m in metrics if m.ttft_ms is not None),
            )
        )
    return sorted(points, key=lambda p: (p.batch, p.prompt_tokens))


def _token_gaps(record: RequestRecord, itl_ms: list[float]) -> list[float]:
    """Each gap between content chunks, per token the later chunk carried."""
    tokens = record.chunk_tokens[1:] if len(record.chunk_tokens) == len(itl_ms) + 1 else []
    if not tokens:
        return list(itl_ms)
    return [gap / max(1, n) for gap, n in zip(itl_ms, tokens, strict=True)]


def _in_flight(record: RequestRecord, group: Sequence[RequestRecord]) -> int:
    """Requests of the group generating at the middle of `record`'s decode: the batch it ran in."""
    assert record.first_token is not None
    middle = (record.first_token + record.end) / 2
    return sum(1 for r in group if r.send <= middle <= r.end)


def profile_from_points(
    points: Sequence[MeasuredPoint],
    roof: Roofline,
    *,
    runtime: str,
    gpu: str,
    model: str,
    layers: int,
    default_floor_ms: float,
    default_host_ms: float = 0.0,
    source: str,
) -> CalibrationProfile:
    """Fit the step model to the points and wrap it as a profile."""
    if not points:
        raise InputError(
            "no load point had enough successful requests of 2+ output tokens to calibrate "
            "from; check the server answers (capplan loadtest) and give more --requests"
        )
    decode = [
        DecodePoint(p.batch, p.batch * (p.prompt_tokens + p.output_tokens / 2), p.step_ms)
        for p in points
    ]
    prefill = [PrefillPoint(p.prompt_tokens, p.ttft_ms) for p in points if p.batch <= 1.0]
    result = fit(
        roof, decode, prefill, default_floor_ms=default_floor_ms, default_host_ms=default_host_ms
    )
    rows = []
    for i, p in enumerate(points):
        row = {
            "label": p.label,
            "requests": p.requests,
            "batch": p.batch,
            "prompt_tokens": p.prompt_tokens,
            "output_tokens": p.output_tokens,
            "step_ms": round(p.step_ms, 3),
            "fitted_step_ms": round(result.predicted_decode[i], 3),
            "ttft_ms": round(p.ttft_ms, 3),
        }
        rows.append(row)
    ttft_rows = [row for row, p in zip(rows, points, strict=True) if p.batch <= 1.0]
    for row, predicted in zip(ttft_rows, result.predicted_ttft, strict=True):
        row["fitted_ttft_ms"] = round(predicted, 3)
    return CalibrationProfile(
        runtime=runtime,
        gpu=gpu,
        model=model,
        layers=layers,
        floor_ms_per_layer=result.floor_ms / layers,
        host_ms_per_sequence=result.host_ms_per_sequence,
        bandwidth_efficiency=result.bandwidth_efficiency,
        compute_efficiency=result.compute_efficiency,
        overhead_ms=result.overhead_ms,
        measured=result.measured,
        source=source,
        fit_rms_error=round(result.rms_error, 4),
        points=tuple(rows),
    )


RunPoint = Callable[[LadderPoint, Path], list[RequestRecord]]
"""run_point(point, out_dir) -> the records of one closed-loop load test at that point."""


def run_ladder(
    points: Sequence[LadderPoint], run_point: RunPoint, out_dir: Path
) -> list[RequestRecord]:
    """Every ladder point, each in its own run folder; records relabelled by point."""
    records: list[RequestRecord] = []
    for point in points:
        for record in run_point(point, out_dir / point.label):
            record.step = point.label
            records.append(record)
    return records


def read_runs(folder: Path) -> list[RequestRecord]:
    """A load-test run's records (its steps are the points), or a calibrate run folder's (each
    sub-run one point, labelled by its folder)."""
    if (folder / "requests.jsonl").is_file():
        return read_records(folder / "requests.jsonl")
    runs = sorted(p.parent for p in folder.glob("*/requests.jsonl"))
    if not runs:
        raise InputError(f"no requests.jsonl in '{folder}' or its folders; give a run folder")
    records = []
    for run in runs:
        for record in read_records(run / "requests.jsonl"):
            record.step = run.name
            records.append(record)
    return records
