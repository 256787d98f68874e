"""The report's figures as PNG bytes (matplotlib's Agg canvas, no pyplot global state).

Each function returns None when the run has nothing to show for it, so the report leaves the
figure out instead of drawing an empty frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from capplan.figures import COLORS, new_figure, png_bytes, tidy
from capplan.loadtest.summary_model import StepSummary

PERCENTILE_STYLE = {"p50": ("-", "o"), "p90": ("--", "s"), "p99": (":", "^")}


def step_axis(steps: Sequence[StepSummary]) -> tuple[str, list[float]] | None:
    """The ladder's x axis from each step's numeric load: ("concurrency", [1, 8]) for a closed
    loop, ("rate", [0.5, 2]) for an open one; None when a load is unknown, a ramp, or mixed."""
    loads = [s.load for s in steps if s.load is not None]
    kinds = {load.kind for load in loads}
    if len(loads) != len(steps) or len(kinds) != 1 or kinds == {"ramp"}:
        return None
    if kinds == {"closed"}:
        return "concurrency", [float(load.concurrency) for load in loads]
    return "rate", [load.rate for load in loads]


def ladder_figure(steps: Sequence[StepSummary]) -> bytes | None:
    """Latency percentiles and throughput against the ladder's concurrency (or rate)."""
    if len(steps) < 2:
        return None
    labels = [s.step or str(i) for i, s in enumerate(steps)]
    axis = step_axis(steps)
    if axis is not None:
        xlabel, x = axis
    else:
        xlabel, x = "step", [float(i) for i in range(len(steps))]
    fig = new_figure(11, 7)
    axes = fig.subplots(2, 2, sharex=True)
    panels = (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("e2e_ms", "E2E latency (ms)"))
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for i, (p, (style, marker)) in enumerate(PERCENTILE_STYLE.items()):
            y = [_stat(s, key, p) for s in steps]
            ax.plot(x, y, linestyle=style, marker=marker, color=COLORS[i], label=p)
        ax.set_title(title, loc="left", fontsize=11)
        ax.set_ylim(bottom=0)
    if any(s.open_loop for s in steps):
        # Open loop: latency from the intended start includes time spent waiting to be sent.
        ax = axes[1][0]
        y = [_stat(s, "latency_ms", "p99") for s in steps]
        ax.plot(x, y, color="#555", linestyle="-.", marker="v", label="p99 from intended start")
        ax.legend(fontsize=8, frameon=False, loc="upper left")
    handles, names = axes[0][0].get_legend_handles_labels()
    # One legend for the three latency panels, above them: inside, it would sit on some curve.
    fig.legend(handles, names, loc="outside upper center", ncol=3, fontsize=9, frameon=False)
    ax = axes[1][1]
    tokens = [s.throughput.output_tokens_per_s for s in steps]
    goodput = [s.goodput.requests_per_s for s in steps]
    requests = [s.throughput.requests_per_s for s in steps]
    ax.plot(x, tokens, marker="o", color=COLORS[2], linewidth=2, label="output tokens/s (left)")
    ax.set_title("Throughput", loc="left", fontsize=11)
    ax.set_ylabel("output tokens/s")
    twin = ax.twinx()
    twin.plot(
        x, requests, marker="s", markerfacecolor="white", linestyle="--", color=COLORS[4],
        label="requests/s (right)",
    )  # fmt: skip
    if any(g is not None for g in goodput) and goodput != requests:
        twin.plot(
            x, goodput, marker="^", linestyle=":", color=COLORS[3], label="goodput req/s (right)"
        )
    twin.set_ylabel("requests/s")
    # With equal answer lengths the two curves are proportional: on axes scaled alike they would
    # lie exactly on top of each other. Tokens/s fills the panel, requests/s its lower part.
    twin.set_ylim(0, max([v for v in requests + goodput if v is not None] or [1.0]) * 1.9)
    ax.set_ylim(0, max([v for v in tokens if v is not None] or [1.0]) * 1.15)
    twin.spines["top"].set_visible(False)
    lines = ax.get_lines() + twin.get_lines()
    labels_ = [str(line.get_label()) for line in lines]
    ax.legend(lines, labels_, fontsize=8, frameon=False, loc="upper left")
    for ax in axes.flat:
        tidy(ax)
        if axis is not None and min(x) > 0 and max(x) / min(x) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:g}" for v in x] if axis is not None else labels, fontsize=8)
    names = {"rate": "arrival rate (requests/s)", "concurrency": "concurrency (closed loop)"}
    for ax in axes[1]:
        ax.set_xlabel(names.get(xlabel, xlabel))
    errors = [s.error_rate or 0.0 for s in steps]
    if any(errors):
        worst = max(errors)
        ax.annotate(
            f"failed requests: up to {worst:.1%} of a step", (0.99, 0.02),
            xycoords="axes fraction", ha="right", fontsize=8, color="#b00",
        )  # fmt: skip
    return png_bytes(fig)


def distributions_figure(requests: pd.DataFrame, step_order: Sequence[str]) -> bytes | None:
    """TTFT and E2E of successful, measured requests: histograms, or CDFs for a ladder."""
    measured = _measured_ok(requests)
    if measured.empty:
        return None
    steps = [s for s in step_order if (measured["step"] == s).any()] or [""]
    fig = new_figure(11, 3.8)
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "e2e_ms", "E2E latency")):
        values_by_step = {
            s: measured.loc[measured["step"] == s, key].dropna().to_numpy(dtype=float)
            for s in steps
        }
        if len(steps) == 1:
            values = values_by_step[steps[0]]
            _histogram(ax, values, COLORS[0])
            ax.set_ylabel("requests")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            for i, (step, values) in enumerate(values_by_step.items()):
                if len(values):
                    ordered = np.sort(values)
                    frac = np.arange(1, len(ordered) + 1) / len(ordered)
                    ax.step(ordered, frac, where="post", color=COLORS[i % len(COLORS)], label=step)
            ax.set_ylabel("fraction of requests ≤ x")
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=8, frameon=False)
        every = np.concatenate([v for v in values_by_step.values() if len(v)] or [np.array([])])
        if len(steps) > 1 and len(every) and every.min() > 0 and every.max() / every.min() >= 20:
            ax.set_xscale("log")  # steps an order of magnitude apart stay readable side by side
        ax.set_xlabel(f"{title} (ms)")
        ax.set_title(title, loc="left", fontsize=11)
        tidy(ax)
    if not measured["ttft_ms"].notna().any():
        axes[0].text(0.5, 0.5, "no streamed tokens", ha="center", transform=axes[0].transAxes)
    return png_bytes(fig)


def _histogram(ax: Axes, values: np.ndarray, color: str) -> None:
    if len(values) == 0:
        return
    bins = min(60, max(10, int(np.sqrt(len(values)) * 2)))
    ax.hist(values, bins=bins, color=color, alpha=0.75, edgecolor="white", linewidth=0.5)
    for p, (style, _) in PERCENTILE_STYLE.items():
        v = float(np.percentile(values, int(p[1:])))
        ax.axvline(v, color="#333", linestyle=style, linewidth=1)
        ax.annotate(
            f"{p} {v:.0f}" if v >= 100 else f"{p} {v:.1f}",
            (v, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
        )


def _measured_ok(requests: pd.DataFrame) -> pd.DataFrame:
    if requests.empty:
        return requests
    mask = requests["ok"].astype(bool) & ~requests["warmup"].astype(bool)
    return requests[mask]


def _stat(step: StepSummary, latency: str, stat: str) -> float | None:
    stats = step.latency(latency)
    return None if stats is None else stats.value(stat)
