"""Capacity search: raise the load until an SLO breaks or the server saturates, then bisect.

The load is a closed-loop concurrency or an open-loop arrival rate. A ladder (doubling from
`start`, or the points given) runs until a point fails; bisection then narrows the gap between
the last passing and the first failing point down to `resolution`. A point passes when every
repeat of it meets every SLO (the safe side for "highest safe"). Each point-run lives in its own
directory with its summary.json, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from capplan.errors import InputError
from capplan.loadtest.summary_model import RunSummary
from capplan.planning.sweep_result import Axis, StopReason, SweepPoint, SweepResult
from capplan.regression.metrics import flatten
from capplan.regression.thresholds import (
    Threshold,
    evaluate_thresholds,
    parse_threshold,
)

# Figures kept per point for the result, the plot and the spread across repeats.
KEY_FIGURES = (
    "p50_ttft_ms",
    "p95_ttft_ms",
    "p50_tpot_ms",
    "p95_tpot_ms",
    "p50_e2e_ms",
    "p95_e2e_ms",
    "error_rate",
    "requests_per_s",
    "output_tokens_per_s",
)
DEFAULT_ERROR_SLO = "error_rate<1%"
REJECTION_STATUSES = ("429", "503")

RunPoint = Callable[[float, int, Path], Mapping[str, Any]]
"""run_point(load, repeat, out_dir) -> summary.json dict of one load test at that load (as
`RunResult.summary` holds it); the sweep reads it as a `RunSummary`."""


@dataclass(frozen=True)
class SweepSpec:
    axis: Axis
    slos: tuple[Threshold, ...]
    start: float = 1.0
    max_load: float = 256.0
    factor: float = 2.0
    ladder: tuple[float, ...] = ()  # explicit points instead of doubling
    bisect: bool = True
    resolution: float = 1.0  # stop bisecting when the gap is this small (rate: requests/s)
    repeats: int = 1
    saturation_gain: float = 0.05  # throughput up < 5% when the load doubled: saturated (0: off)

    def __post_init__(self) -> None:
        if self.start <= 0 or self.max_load < self.start:
            raise InputError("the sweep needs 0 < --start <= --max")
        if self.factor <= 1.0:
            raise InputError("--factor must be above 1 (2 doubles the load each step)")
        if self.repeats < 1:
            raise InputError("--repeats must be at least 1")
        if self.resolution <= 0:
            raise InputError("--resolution must be above 0")

    def ladder_points(self) -> list[float]:
        if self.ladder:
            return sorted(set(self.ladder))
        points, load = [], self.start
        while load <= self.max_load + 1e-9:
            points.append(self._snap(load))
            load *= self.factor
        if points[-1] < self.max_load:
            points.append(self._snap(self.max_load))
        return sorted(set(points))

    def _snap(self, load: float) -> float:
        return float(round(load)) if self.axis == "concurrency" else round(load, 4)

    def midpoint(self, low: float, high: float) -> float | None:
        """The next point to try between a passing `low` and a failing `high`, if worth it."""
        if high - low <= self.resolution + 1e-9:
            return None
        if self.axis == "concurrency":
            mid = float(math.floor((low + high) / 2))
            return mid if low < mid < high else None
        return round((low + high) / 2, 4)


def parse_slos(texts: Sequence[str]) -> tuple[Threshold, ...]:
    """The SLO expressions, plus `error_rate<1%` unless an error-rate SLO is given."""
    slos = [parse_threshold(t) for t in texts]
    if not any(s.metric == "error_rate" for s in slos):
        slos.append(parse_threshold(DEFAULT_ERROR_SLO))
    return tuple(slos)


@dataclass
class _Search:
    spec: SweepSpec
    run_point: RunPoint
    out_dir: Path
    resume: bool
    on_point: Callable[[SweepPoint], None] | None
    points: dict[float, SweepPoint] = field(default_factory=dict)

    def measure(self, load: float, phase: Literal["ladder", "bisect"]) -> SweepPoint:
        if load in self.points:
            return self.points[load]
        summaries, dirs, resumed = [], [], True
        for repeat in range(self.spec.repeats):
            run_dir = self.out_dir / point_dir_name(self.spec.axis, load, repeat)
            summary = self._finished(run_dir)
            if summary is None:
                resumed = False
                summary = self._run(load, repeat, run_dir)
            summaries.append(summary)
            dirs.append(str(run_dir))
        point = replace(
            _point(load, summaries, self.spec.slos, tuple(dirs), phase), resumed=resumed
        )
        self.points[load] = point
        if self.on_point is not None:
            self.on_point(point)
        return point

    def _finished(self, run_dir: Path) -> RunSummary | None:
        """A point-run an earlier sweep completed (an interrupted one is measured again)."""
        summary_path = run_dir / "summary.json"
        if not self.resume or not summary_path.is_file():
            return None
        try:
            data = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        summary = RunSummary.from_dict(data)
        return None if summary.interrupted else summary

    def _run(self, load: float, repeat: int, run_dir: Path) -> RunSummary:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a point killed mid-run: its partial records would mix in
        summary = RunSummary.from_dict(self.run_point(load, repeat, run_dir))
        if summary.interrupted:
            # Ctrl-C stops the load test, which returns what finished; judging that partial
            # point (and going on to the next) would be wrong, so the whole sweep stops here.
            raise SweepInterrupted(self.spec.axis, load, self.out_dir)
        return summary


class SweepInterrupted(Exception):
    """The user stopped the sweep; the points measured so far stay on disk for a resume."""

    def __init__(self, axis: str, load: float, out_dir: Path) -> None:
        super().__init__(f"interrupted at {axis}={load:g}")
        self.axis, self.load, self.out_dir = axis, load, out_dir


WORKLOAD_FILE = "sweep-workload.json"
SWEEP_FILE = "sweep.json"


def read_sweep(sweep: Path) -> tuple[Path, dict[str, Any]]:
    """A finished sweep's sweep.json (given its directory or the file), and where it lies."""
    path = sweep / SWEEP_FILE if sweep.is_dir() else sweep
    if not path.is_file():
        raise InputError(f"no sweep.json in '{sweep}'; run `capplan sweep --out DIR` first")
    return path, json.loads(path.read_text(encoding="utf-8"))


def check_workload(out_dir: Path, workload: Mapping[str, Any], *, resume: bool) -> None:
    """Refuses to resume into a sweep directory measured with another workload, then records it.

    Points are reused by load alone, so a resumed sweep with other prompts, output lengths or
    request counts would silently mix two workloads in one curve.
    """
    path = out_dir / WORKLOAD_FILE
    current = json.loads(json.dumps(dict(workload), default=str))
    if resume and path.is_file():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            earlier = None
        if isinstance(earlier, dict) and earlier != current:
            differing = sorted(k for k in {*earlier, *current} if earlier.get(k) != current.get(k))
            raise InputError(
                f"'{out_dir}' holds a sweep of another workload (differs in: "
                f"{', '.join(differing)}); pass --no-resume to start afresh or another --out"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2, sort_keys=True), encoding="utf-8")


def point_dir_name(axis: Axis, load: float, repeat: int) -> str:
    value = f"{int(load)}" if axis == "concurrency" else f"{load:g}"
    return f"{axis}={value}" + (f"-r{repeat + 1}" if repeat else "")


def run_sweep(
    spec: SweepSpec,
    run_point: RunPoint,
    out_dir: str | Path,
    *,
    resume: bool = True,
    on_point: Callable[[SweepPoint], None] | None = None,
    workload: Mapping[str, Any] | None = None,
    plot: bool = False,
) -> SweepResult:
    """Ladder, then bisection; writes sweep.json (and with `plot`, sweep.png) under `out_dir`
    and returns the result.

    `workload` (what every point runs, load aside) guards a resume against mixing workloads.
    Raises `SweepInterrupted` when a point-run reports it was interrupted (Ctrl-C).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if workload is not None:
        check_workload(out, workload, resume=resume)
    search = _Search(spec, run_point, out, resume, on_point)
    last_pass: SweepPoint | None = None
    first_fail: SweepPoint | None = None
    stop: StopReason = "max" if not spec.ladder else "ladder_end"
    for load in spec.ladder_points():
        point = search.measure(load, "ladder")
        if not point.passed:
            first_fail = point
            stop = "slo"
            break
        if last_pass is not None and _saturated(spec, last_pass, point):
            search.points[load] = point = _mark_saturated(point)
            first_fail = point
            stop = "saturated"
            break
        last_pass = point
    # Saturation is a property of the ladder's shape, not of one point: nothing to bisect.
    if spec.bisect and stop == "slo" and first_fail is not None:
        low = last_pass.load if last_pass is not None else 0.0
        high = first_fail.load
        while (mid := spec.midpoint(low, high)) is not None and mid > 0:
            if search.measure(mid, "bisect").passed:
                low = mid
            else:
                high = mid
    points = tuple(sorted(search.points.values(), key=lambda p: p.load))
    safe = _highest_safe(points)
    failing = [p.load for p in points if not p.passed or p.saturated]
    rejected = [p.load for p in points if p.rejections > 0]
    result = SweepResult(
        axis=spec.axis,
        slos=tuple(s.expression for s in spec.slos),
        points=points,
        highest_safe=safe,
        first_failure=min(failing) if failing else None,
        first_rejection=min(rejected) if rejected else None,
        knee=find_knee(points),
        stop_reason=stop,
        repeats=spec.repeats,
        out_dir=str(out),
    )
    if plot and points:
        from capplan.planning.plot import plot_sweep

        result = replace(result, plot=str(plot_sweep(result, out / "sweep.png")))
    (out / SWEEP_FILE).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return result


def _highest_safe(points: Sequence[SweepPoint]) -> float | None:
    """The largest passing load below every failing one (a pass above a failure is luck)."""
    safe = None
    for p in points:
        if not p.passed or p.saturated:
            break
        safe = p.load
    return safe


def _saturated(spec: SweepSpec, before: SweepPoint, after: SweepPoint) -> bool:
    """More load bought (almost) no more throughput: the server is at its ceiling."""
    if spec.saturation_gain <= 0:
        return False
    t0 = before.figures.get("requests_per_s")
    t1 = after.figures.get("requests_per_s")
    if t0 is None or t1 is None or t0 <= 0 or after.load <= before.load:
        return False
    load_growth = after.load / before.load - 1.0
    return (t1 / t0 - 1.0) < spec.saturation_gain * min(1.0, load_growth / 0.5)


def _mark_saturated(point: SweepPoint) -> SweepPoint:
    return replace(point, saturated=True)


def _point(
    load: float,
    summaries: Sequence[RunSummary],
    slos: Sequence[Threshold],
    run_dirs: tuple[str, ...],
    phase: Literal["ladder", "bisect"],
) -> SweepPoint:
    flats = [flatten(s.whole) for s in summaries]
    figures: dict[str, float] = {}
    spread: dict[str, tuple[float, float]] = {}
    for name in {k for f in flats for k in f}:
        values = [f[name] for f in flats if name in f]
        figures[name] = statistics.median(values)
        if len(values) > 1 and name in KEY_FIGURES:
            spread[name] = (min(values), max(values))
    per_repeat = [evaluate_thresholds(s.whole, slos) for s in summaries]
    worst = tuple(
        next((r[i] for r in per_repeat if not r[i].passed), per_repeat[0][i])
        for i in range(len(slos))
    )
    rejections = sum(_rejections(s) for s in summaries)
    invalid = tuple(dict.fromkeys(r for s in summaries if not s.valid for r in s.reasons))
    return SweepPoint(load, figures, spread, worst, rejections, run_dirs, False, phase, invalid)


def _rejections(summary: RunSummary) -> int:
    by_status = summary.whole.requests.by_status
    return sum(by_status.get(code, 0) for code in REJECTION_STATUSES)


def find_knee(points: Sequence[SweepPoint], latency: str = "p95_e2e_ms") -> float | None:
    """Kneedle on the latency-throughput curve: where latency starts to buy little throughput.

    Both axes are scaled to [0, 1]; for a curve whose latency rises ever faster with
    throughput, the knee is the point farthest below the chord, max(x - y).
    """
    curve = [
        (p.load, p.figures["requests_per_s"], p.figures[latency])
        for p in points
        if "requests_per_s" in p.figures and latency in p.figures and p.rejections == 0
    ]
    if len(curve) < 3:
        return None
    xs = [c[1] for c in curve]
    ys = [c[2] for c in curve]
    x_span, y_span = max(xs) - min(xs), max(ys) - min(ys)
    if x_span <= 0 or y_span <= 0:
        return None
    best_load, best = None, -math.inf
    # Only an interior point can be a knee: at an end the curve has not bent (yet).
    for load, x, y in curve[1:-1]:
        score = (x - min(xs)) / x_span - (y - min(ys)) / y_span
        if score > best:
            best_load, best = load, score
    return best_load if best > 0 else None
