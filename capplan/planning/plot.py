"""sweep.png: latency and throughput against the load, with SLO limits and findings marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capplan.planning.sweep_result import SweepResult


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Writes a two-panel PNG and returns its path."""
    from capplan.figures import new_figure, save_png, tidy

    points = result.points
    loads = [p.load for p in points]
    fig = new_figure(11, 4.2)
    ax_lat, ax_thr = fig.subplots(1, 2)
    for name, style in (
        ("p50_ttft_ms", "o-"),
        ("p95_ttft_ms", "o--"),
        ("p50_e2e_ms", "s-"),
        ("p95_e2e_ms", "s--"),
    ):
        series = [(p.load, p.figures[name]) for p in points if name in p.figures]
        if series:
            ax_lat.plot(*zip(*series, strict=True), style, label=name.replace("_ms", ""))
        lows = [p.spread[name][0] for p in points if name in p.spread]
        highs = [p.spread[name][1] for p in points if name in p.spread]
        if lows:
            spread_loads = [p.load for p in points if name in p.spread]
            ax_lat.fill_between(spread_loads, lows, highs, alpha=0.15)
    ceiling = max((v for p in points for v in _latencies(p)), default=0.0)
    for slo in result.slos:
        _slo_line(ax_lat, slo, ceiling)
    ax_lat.set_xlabel(result.axis)
    ax_lat.set_ylabel("ms")
    ax_lat.set_title("Latency vs load")
    thr = [(p.load, p.figures.get("output_tokens_per_s", 0.0)) for p in points]
    if thr:
        ax_thr.plot(*zip(*thr, strict=True), "o-", color="tab:green", label="output tokens/s")
    ax_thr.set_xlabel(result.axis)
    ax_thr.set_ylabel("output tokens/s")
    ax_thr.set_title("Throughput vs load")
    failed = [p for p in points if not p.passed or p.saturated]
    if failed:
        ax_thr.plot(
            [p.load for p in failed],
            [p.figures.get("output_tokens_per_s", 0.0) for p in failed],
            "x",
            color="tab:red",
            ms=10,
            mew=2,
            label="failed SLO / saturated",
        )
    for ax in (ax_lat, ax_thr):
        if result.highest_safe is not None:
            ax.axvline(result.highest_safe, color="tab:green", ls=":", label="highest safe")
        if result.knee is not None:
            ax.axvline(result.knee, color="tab:purple", ls="-.", label="knee")
        if failed:
            first = min(p.load for p in failed)
            ax.axvspan(first, max(loads), color="tab:red", alpha=0.06)
        if len(loads) > 1 and max(loads) / min(loads) >= 8:
            # A doubling ladder: equal steps on a log axis, ticks at the loads measured.
            ax.set_xscale("log", base=2)
            ax.set_xticks(loads, [f"{x:g}" for x in loads])
        tidy(ax)
        ax.legend(fontsize=8)
    return save_png(fig, path)


_LATENCIES = ("p50_ttft_ms", "p95_ttft_ms", "p50_e2e_ms", "p95_e2e_ms")


def _latencies(point: Any) -> list[float]:
    return [point.figures[n] for n in _LATENCIES if n in point.figures]


def _slo_line(ax: Any, expression: str, ceiling: float) -> None:
    """The SLO's limit; one far above every measured latency is named, not drawn, so that it
    does not squash the curves flat against the axis."""
    from capplan.regression.thresholds import parse_threshold

    slo = parse_threshold(expression)
    if not slo.metric.endswith("_ms"):
        return
    if ceiling > 0 and slo.limit > 3 * ceiling:
        ax.plot([], [], " ", label=f"SLO {expression} (off scale)")
        return
    ax.axhline(slo.limit, color="tab:red", ls=":", lw=1, label=f"SLO {expression}")
