"""What a sweep found: its points and findings, as `sweep.json` records them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from capplan.regression.thresholds import ThresholdResult

Axis = Literal["concurrency", "rate"]
StopReason = Literal["slo", "saturated", "max", "ladder_end"]


@dataclass(frozen=True)
class SweepPoint:
    load: float
    figures: dict[str, float]  # median across repeats
    spread: dict[str, tuple[float, float]]  # (min, max) across repeats, when repeats > 1
    slo_results: tuple[ThresholdResult, ...]  # the worst repeat's result per SLO
    rejections: int  # 429/503 answers across repeats
    run_dirs: tuple[str, ...]
    saturated: bool = False
    phase: Literal["ladder", "bisect"] = "ladder"
    invalid: tuple[str, ...] = ()  # why the load tester distrusts a run (client-bound, ...)
    resumed: bool = False  # read back from an earlier, interrupted sweep's records

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.slo_results)

    @property
    def broken(self) -> list[str]:
        return [r.threshold.expression for r in self.slo_results if not r.passed]


@dataclass(frozen=True)
class SweepResult:
    axis: Axis
    slos: tuple[str, ...]
    points: tuple[SweepPoint, ...]  # sorted by load
    highest_safe: float | None
    first_failure: float | None
    first_rejection: float | None  # lowest load answered with 429/503: the admission gate
    knee: float | None
    stop_reason: StopReason
    repeats: int
    out_dir: str = ""
    plot: str | None = None

    def point(self, load: float) -> SweepPoint | None:
        return next((p for p in self.points if p.load == load), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "slos": list(self.slos),
            "highest_safe": self.highest_safe,
            "first_failure": self.first_failure,
            "first_rejection": self.first_rejection,
            "knee": self.knee,
            "stop_reason": self.stop_reason,
            "repeats": self.repeats,
            "plot": self.plot,
            "points": [
                {
                    "load": p.load,
                    "phase": p.phase,
                    "passed": p.passed,
                    "broken": p.broken,
                    "saturated": p.saturated,
                    "rejections": p.rejections,
                    "invalid": list(p.invalid),
                    "resumed": p.resumed,
                    "figures": p.figures,
                    "spread": {k: list(v) for k, v in p.spread.items()},
                    "slo_results": [r.to_dict() for r in p.slo_results],
                    "run_dirs": list(p.run_dirs),
                }
                for p in self.points
            ],
        }
