"""The timeline figure: the load and the GPU on one time axis, panel by panel.

Client-side panels come from the request records (requests in flight, tokens/s); server and GPU
panels from telemetry.csv on the same RunClock. Server readings are drawn at `target_t`, when
they were read. A panel with nothing to show is left out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from capplan.figures import COLORS, new_figure, png_bytes, tidy
from capplan.loadtest.report.frame import in_flight, token_times

_GPU_MEM = re.compile(r"^gpu(\d+)_mem_used_mib$")


def timeline_figure(
    requests: pd.DataFrame,
    telemetry: pd.DataFrame,
    start: float,
    step_order: Sequence[str],
    gpu_memory_label: str | None,
) -> bytes | None:
    """Load over time (in flight, server queue, tokens/s) above GPU memory and utilisation."""
    if requests.empty and telemetry.empty:
        return None
    gpus = _gpu_indexes(telemetry)
    has_memory = (
        _has(telemetry, "gpu_mem_used_mib")
        or _has(telemetry, "metrics_kv_cache_usage")
        or _process_memory(telemetry)
    )
    has_busy = _has(telemetry, "gpu_util_pct") or _has(telemetry, "host_cpu_pct")
    n_panels = 2 + int(has_memory) + int(has_busy)
    fig = new_figure(11, 2.3 * n_panels + 0.4)
    axes: list[Axes] = list(np.atleast_1d(fig.subplots(n_panels, 1, sharex=True)))
    tel_x = (telemetry["t"] - start).to_numpy(dtype=float) if "t" in telemetry else np.array([])
    span = max(
        float(requests["end"].max()) - start if not requests.empty else 0.0,
        float(tel_x.max()) if len(tel_x) else 0.0,
        1.0,
    )
    width = _bin_width(span)
    edges = np.arange(0.0, span + width, width)

    _load_panel(axes[0], requests, telemetry, start, edges)
    _tokens_panel(axes[1], requests, start, edges)
    index = 2
    if has_memory:
        _memory_panel(axes[index], telemetry, start, gpus, gpu_memory_label)
        index += 1
    if has_busy:
        _busy_panel(axes[index], telemetry, tel_x, gpus)
    _shade_steps(axes, requests, start, step_order)
    for ax in axes:
        tidy(ax)
        ax.set_xlim(left=0)
    axes[-1].set_xlabel("seconds since the run started")
    return png_bytes(fig)


def _load_panel(
    ax: Axes, requests: pd.DataFrame, telemetry: pd.DataFrame, start: float, edges: np.ndarray
) -> None:
    width = float(edges[1] - edges[0])
    times, counts = in_flight(requests)
    if times:
        mean = _time_weighted_mean(np.array(times) - start, np.array(counts, dtype=float), edges)
        ax.stairs(
            mean, edges, color=COLORS[0], label=f"in flight, client records\n(mean per {width:g} s)"
        )
    target = _target_readings(telemetry)
    if not target.empty:
        target_x = (target["target_t"] - start).to_numpy(dtype=float)
        for column, label, color in (
            ("metrics_running", "server running (/metrics)", COLORS[2]),
            ("metrics_waiting", "server queued (/metrics)", COLORS[3]),
            ("stats_running", "server running (/stats)", COLORS[2]),
            ("stats_queued", "server queued (/stats)", COLORS[3]),
        ):
            twin = f"metrics_{column[6:]}".replace("queued", "waiting")
            if column.startswith("stats_") and _has(target, twin):
                continue  # the same count twice, from two endpoints
            if _has(target, column):
                # A poll holds until the next one: steps with a dot per reading, not a slope
                # that invents values between polls.
                ax.plot(
                    target_x, target[column], color=color, linewidth=1.2, label=label,
                    drawstyle="steps-post", marker=".", markersize=3,
                )  # fmt: skip
    ax.set_ylabel("requests")
    ax.set_title("Load: requests in flight (client) and at the server", loc="left", fontsize=11)
    ax.set_ylim(bottom=0)
    _legend(ax)


def _tokens_panel(ax: Axes, requests: pd.DataFrame, start: float, edges: np.ndarray) -> None:
    width = float(edges[1] - edges[0])
    t_tokens, weights = token_times(requests)
    if t_tokens:
        rel = np.array(t_tokens) - start
        hist, _ = np.histogram(rel, bins=edges, weights=weights)
        ax.stairs(hist / width, edges, color=COLORS[2], label=f"output tokens/s (per {width:g} s)")
    failed = requests[~requests["ok"].astype(bool)] if not requests.empty else requests
    if not failed.empty:
        ax.plot(
            failed["end"] - start, np.zeros(len(failed)), "x", color=COLORS[3],
            label=f"failed request ({len(failed)}, warmup incl.)", clip_on=False,
        )  # fmt: skip
    ax.set_ylabel("tokens/s")
    ax.set_title("Output tokens per second (client-side)", loc="left", fontsize=11)
    ax.set_ylim(bottom=0)
    _legend(ax)


def _memory_panel(
    ax: Axes, telemetry: pd.DataFrame, start: float, gpus: list[int], label: str | None
) -> None:
    x = (telemetry["t"] - start).to_numpy(dtype=float)
    if len(gpus) > 1:  # tensor parallel: one line per GPU says more than their sum
        for i in gpus:
            ax.plot(
                x, telemetry[f"gpu{i}_mem_used_mib"] / 1024, color=COLORS[(4 + i) % len(COLORS)],
                label=f"GPU {i} used",
            )  # fmt: skip
        total = f"gpu{gpus[0]}_mem_total_mib"
        total_label = "total per GPU"
    else:
        if _has(telemetry, "gpu_mem_used_mib"):
            ax.plot(x, telemetry["gpu_mem_used_mib"] / 1024, color=COLORS[4], label="used")
        total, total_label = "gpu_mem_total_mib", "total"
    if not _has(telemetry, "gpu_mem_used_mib") and _process_memory(telemetry):
        # A CPU backend: its /stats reports the server process' resident memory, which is
        # worth seeing against the load, but is not GPU memory and is not drawn as such.
        target = _target_readings(telemetry)
        ax.plot(
            target["target_t"] - start, target["stats_gpu_memory_used_mib"] / 1024,
            color=COLORS[5], label="server process RSS (/stats)",
        )  # fmt: skip
        total = ""
    if total and _has(telemetry, total):
        ax.plot(
            x, telemetry[total] / 1024, color="#555", linestyle="--", linewidth=1,
            label=total_label,
        )  # fmt: skip
    ax.set_ylabel("GiB")
    ax.set_ylim(bottom=0)
    title = f"GPU memory ({label})" if label else "GPU memory: not reported"
    if not total:
        title = "Server memory: process RSS from the target's /stats (a CPU backend, no GPU)"
    if _has(telemetry, "metrics_kv_cache_usage"):
        twin = _twin(ax, "KV cache %")
        target = _target_readings(telemetry)
        twin.plot(
            target["target_t"] - start, target["metrics_kv_cache_usage"] * 100, color="#17becf",
            linestyle="-.", linewidth=1.2, label="KV cache usage % (/metrics)",
        )  # fmt: skip
        twin.set_ylim(0, 105)
        title += " and the server's KV cache usage"
        _legend_both(ax, twin)
    else:
        _legend(ax)
    ax.set_title(title, loc="left", fontsize=11)


def _busy_panel(ax: Axes, telemetry: pd.DataFrame, x: np.ndarray, gpus: list[int]) -> None:
    if len(gpus) > 1:
        for i in gpus:
            if _has(telemetry, f"gpu{i}_util_pct"):
                ax.plot(
                    x, telemetry[f"gpu{i}_util_pct"], color=COLORS[(1 + i) % len(COLORS)],
                    label=f"GPU {i} utilisation",
                )  # fmt: skip
        title = "GPU utilisation (NVML)"
    elif _has(telemetry, "gpu_util_pct"):
        ax.plot(x, telemetry["gpu_util_pct"], color=COLORS[1], label="GPU utilisation (NVML)")
        title = "GPU utilisation (NVML)"
    else:
        title = "Host CPU (no GPU readings: NVML unavailable)"
    if _has(telemetry, "host_cpu_pct"):
        ax.plot(x, telemetry["host_cpu_pct"], color="#999", linewidth=1, label="host CPU (psutil)")
    if _has(telemetry, "client_cpu_pct"):
        ax.plot(
            x, telemetry["client_cpu_pct"], color="#555", linewidth=1, linestyle=":",
            label="load generator CPU\n(psutil, % of one core)",
        )  # fmt: skip
    ax.set_ylabel("%")
    ax.set_ylim(bottom=0)
    power = [f"gpu{i}_power_w" for i in gpus if _has(telemetry, f"gpu{i}_power_w")]
    if power:
        twin = _twin(ax, "W")
        twin.plot(x, telemetry[power].sum(axis=1), color=COLORS[3], linewidth=1, alpha=0.7,
                  label="GPU power W (all GPUs)")  # fmt: skip
        twin.set_ylim(bottom=0)
        title += " and power"
        _legend_both(ax, twin)
    else:
        _legend(ax)
    ax.set_title(title, loc="left", fontsize=11)


def _process_memory(telemetry: pd.DataFrame) -> bool:
    """Whether the target's /stats reported process RSS (a CPU backend), not GPU memory."""
    if not _has(telemetry, "stats_memory_kind") or not _has(telemetry, "stats_gpu_memory_used_mib"):
        return False
    return bool((telemetry["stats_memory_kind"] == "process_rss").any())


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(frame[column].notna().any())


def _gpu_indexes(telemetry: pd.DataFrame) -> list[int]:
    found = (_GPU_MEM.match(c) for c in telemetry.columns)
    return sorted(int(m[1]) for m in found if m and _has(telemetry, m[0]))


def _target_readings(telemetry: pd.DataFrame) -> pd.DataFrame:
    """Server readings at the moment they were read (`target_t`), each poll once."""
    if not _has(telemetry, "target_t"):
        return pd.DataFrame()
    readings = telemetry[telemetry["target_t"].notna()]
    return readings.drop_duplicates(subset="target_t").sort_values("target_t")


def _legend(ax: Axes) -> None:
    # Outside, to the right: over-the-data legends hide exactly the peaks a reader looks for.
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.005, 1.0))


def _twin(ax: Axes, ylabel: str) -> Axes:
    """A second y axis on the right for a reading in other units."""
    twin = ax.twinx()
    twin.set_ylabel(ylabel)
    twin.spines["top"].set_visible(False)
    return twin


def _legend_both(ax: Axes, twin: Axes) -> None:
    """One legend for both axes, placed clear of the twin axis' labels."""
    handles = ax.get_lines() + twin.get_lines()
    ax.legend(
        handles, [str(h.get_label()) for h in handles], fontsize=8, frameon=False,
        loc="upper left", bbox_to_anchor=(1.06, 1.0),
    )  # fmt: skip


def _shade_steps(
    axes: Sequence[Axes], requests: pd.DataFrame, start: float, step_order: Sequence[str]
) -> None:
    if requests.empty or len(step_order) < 2:
        return
    for i, step in enumerate(step_order):
        rows = requests[requests["step"] == step]
        if rows.empty:
            continue
        lo, hi = float(rows["send"].min()) - start, float(rows["end"].max()) - start
        for ax in axes:
            if i % 2:
                ax.axvspan(lo, hi, color="#f2f2f2", zorder=0)
        # Alternate two rows: labels of short neighbouring steps would print over each other.
        axes[0].annotate(
            step, ((lo + hi) / 2, 0.97 if i % 2 == 0 else 0.84), xycoords=("data", "axes fraction"),
            ha="center", va="top", fontsize=7.5, color="#444",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
        )  # fmt: skip
    top = axes[0].get_ylim()[1]
    axes[0].set_ylim(0, top * 1.45)  # headroom for the step labels


def _time_weighted_mean(times: np.ndarray, levels: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of a step function (level[i] from times[i] on) over each bin of `edges`."""
    widths = np.diff(times, append=times[-1])
    area = np.concatenate([[0.0], np.cumsum(levels * widths)])[:-1]  # area up to times[i]
    # Area up to any t: area at the last event before t plus that event's level for the rest.
    index = np.searchsorted(times, edges, side="right") - 1
    before = index < 0
    index = np.clip(index, 0, len(times) - 1)
    at_edges = area[index] + levels[index] * (edges - times[index])
    at_edges[before] = 0.0
    return np.diff(at_edges) / np.diff(edges)


def _bin_width(span_s: float) -> float:
    for width in (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0):
        if span_s / width <= 240:
            return width
    return 120.0
