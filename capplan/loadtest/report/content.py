"""What a report says, independent of its format: facts, tables and figures.

`markdown.py` and `html.py` render the same `ReportContent`, so report.md and report.html
never disagree.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from capplan.loadtest.report import plots
from capplan.loadtest.report.energy import energy_between, energy_columns, joules_per_token
from capplan.loadtest.report.frame import run_start
from capplan.loadtest.report.timeline import timeline_figure
from capplan.loadtest.summary_blocks import Stats
from capplan.loadtest.summary_model import RunConfig, RunSummary, StepSummary
from capplan.loadtest.summary_run_blocks import ServerView


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    figures: bool = True  # False: a reading/value list, every cell left-aligned


@dataclass
class Plot:
    name: str  # file stem under plots/
    title: str
    caption: str
    png: bytes


@dataclass
class ReportContent:
    title: str
    valid: bool
    reasons: list[str]
    notes: list[str]
    facts: list[tuple[str, str]]
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    config_json: str = "{}"
    environment: list[tuple[str, str]] = field(default_factory=list)


def build_content(
    summary: RunSummary,
    requests: pd.DataFrame,
    telemetry: pd.DataFrame,
    telemetry_meta: Mapping[str, Any],
) -> ReportContent:
    config = summary.config
    steps = summary.steps
    step_order = [s.step for s in steps]
    start = run_start(requests, telemetry)
    joules = _energy_by_step(requests, telemetry, step_order)
    memory_label = _memory_label(telemetry, telemetry_meta)
    content = ReportContent(
        title=f"Load test: {config.name or summary.run_id or 'run'}",
        valid=summary.valid,
        reasons=list(summary.reasons),
        notes=_notes(steps),
        facts=_facts(summary, config, requests, start, telemetry_meta),
        config_json=json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str),
        environment=_environment(summary.environment),
    )
    content.tables.append(_latency_table(steps))
    content.tables.append(_throughput_table(steps, joules))
    content.tables.append(_status_table(steps))
    server_table = _server_view_table(summary.server_view)
    if server_table is not None:
        content.tables.append(server_table)
    telemetry_table = _telemetry_table(telemetry, telemetry_meta, requests, start)
    if telemetry_table is not None:
        content.tables.append(telemetry_table)
    figure = plots.ladder_figure(steps)
    if figure is not None:
        content.plots.append(
            Plot(
                "ladder",
                "Latency and throughput against load",
                "Percentiles over successful, measured requests per step; throughput over the "
                "step's window (first send to last end).",
                figure,
            )
        )
    figure = plots.distributions_figure(requests, step_order)
    if figure is not None:
        content.plots.append(
            Plot(
                "distributions",
                "TTFT and end-to-end latency distributions",
                "Successful requests after warmup. Lines mark p50 (solid), p90 (dashed), p99 "
                "(dotted); a ladder shows one cumulative curve per step.",
                figure,
            )
        )
    if start is not None:
        figure = timeline_figure(requests, telemetry, start, step_order, memory_label)
        if figure is not None:
            content.plots.append(
                Plot(
                    "timeline",
                    "Load and GPU over time",
                    "Requests in flight from the request records; server queue, GPU memory and "
                    "utilisation from telemetry.csv, on the same clock.",
                    figure,
                )
            )
    return content


_NUMERIC = re.compile(r"-|[0-9][0-9,.% /]*(?: [A-Za-z°]+)?")


def is_numeric(text: str) -> bool:
    """Whether a table cell reads as a figure (right-aligned) rather than words."""
    return bool(_NUMERIC.fullmatch(text))


def fmt(value: Any, digits: int | None = None) -> str:
    """Numbers for tables: `-` when missing, fewer decimals as values grow."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if digits is not None:
            return f"{value:,.{digits}f}"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def _stat(stats: Stats | None, p: str) -> float | None:
    return None if stats is None else stats.value(p)


def _latency_table(steps: Sequence[StepSummary]) -> Table:
    open_loop = any(s.open_loop for s in steps)
    headers = ["step", "TTFT p50", "p90", "p99", "TPOT p50", "p99", "ITL p50", "p99"]
    headers += ["E2E p50", "p90", "p99"]
    if open_loop:
        headers += ["latency p99 (from intended start)", "generator lag p99"]
    rows = []
    for s in steps:
        row = [s.step or "run"]
        row += [fmt(_stat(s.ttft_ms, p)) for p in ("p50", "p90", "p99")]
        row += [fmt(_stat(s.tpot_ms, p)) for p in ("p50", "p99")]
        row += [fmt(_stat(s.itl_ms, p)) for p in ("p50", "p99")]
        row += [fmt(_stat(s.e2e_ms, p)) for p in ("p50", "p90", "p99")]
        if open_loop:
            row += [fmt(_stat(s.latency_ms, "p99")), fmt(_stat(s.generator_lag_ms, "p99"))]
        rows.append(row)
    note = (
        "Milliseconds, successful measured requests (warmup excluded); "
        "docs/metrics.md defines each."
    )
    return Table("Latency (ms)", headers, rows, note)


def _throughput_table(steps: Sequence[StepSummary], joules: Mapping[str, float | None]) -> Table:
    headers = ["step", "ok / total", "failed", "requests/s", "output tokens/s"]
    headers += ["goodput req/s", "goodput %", "J / output token", "figures valid"]
    rows = []
    for s in steps:
        requests, fraction = s.requests, s.goodput.fraction
        rows.append(
            [
                s.step or "run",
                f"{fmt(requests.ok)} / {fmt(requests.total)}",
                fmt(requests.failed),
                fmt(s.throughput.requests_per_s),
                fmt(s.throughput.output_tokens_per_s),
                fmt(s.goodput.requests_per_s),
                f"{fraction:.1%}" if fraction is not None else "-",
                fmt(joules.get(s.step)),
                "yes" if s.valid else "NO",
            ]
        )
    note = (
        "Throughput over each step's window. Goodput: requests meeting every SLO set. "
        "Figures valid: the client kept up and something succeeded (a step of failures can "
        "be valid: its failures were measured correctly)."
    )
    if any(v is not None for v in joules.values()):
        note += " Energy: all GPUs over the step's window (NVML), per output token generated."
    else:
        column = headers.index("J / output token")
        headers.pop(column)
        for row in rows:
            row.pop(column)
    return Table("Throughput and outcome", headers, rows, note)


def _status_table(steps: Sequence[StepSummary]) -> Table:
    columns: dict[tuple[str, str], str] = {}
    for s in steps:
        for section, prefix in (("by_status", "HTTP "), ("by_error", "error ")):
            for name in _section(s, section):
                header = prefix + name if name.isdigit() or section == "by_error" else name
                columns.setdefault((section, name), header)
    headers = ["step", *columns.values()]
    rows = []
    for s in steps:
        row = [s.step or "run"]
        row += [fmt(_section(s, section).get(name, 0)) for section, name in columns]
        rows.append(row)
    note = (
        "HTTP columns count responses by status (a request with no response by its error); "
        "error columns count failed requests by error class. Warmup excluded."
    )
    examples: dict[str, str] = {}
    for s in steps:
        for kind, detail in s.requests.error_examples.items():
            examples.setdefault(kind, detail)
    if examples:
        note += " First failure of each kind: " + "; ".join(
            f"{kind}: {detail or '(no detail)'}" for kind, detail in examples.items()
        )
    return Table("Requests by status and error", headers, rows, note)


def _section(step: StepSummary, section: str) -> Mapping[str, int]:
    return step.requests.by_status if section == "by_status" else step.requests.by_error


def _server_view_table(view: ServerView | None) -> Table | None:
    """The client's means beside the server's own /metrics for the same run."""
    if view is None:
        return None
    server, client = view.server, view.client
    rows = [
        ["requests finished ok", fmt(client.requests), fmt(server.requests), "-"],
        [
            "TTFT mean (ms)",
            fmt(client.ttft_mean_ms),
            fmt(server.ttft_mean_ms),
            fmt(view.ttft_gap_ms),
        ],
        ["E2E mean (ms)", fmt(client.e2e_mean_ms), fmt(server.e2e_mean_ms), fmt(view.e2e_gap_ms)],
        ["queue time mean (ms)", "-", fmt(server.queue_mean_ms), "-"],
        ["output tokens", fmt(client.output_tokens), fmt(server.output_tokens), "-"],
        ["prompt tokens", fmt(client.prompt_tokens), fmt(server.prompt_tokens), "-"],
    ]
    note = (
        "The whole run, warmup included: the client's records beside the increase of the "
        "server's own /metrics histograms and counters over the run. The difference is what "
        "the network, HTTP and the client add."
    )
    if view.notes:
        note += " " + " ".join(n[0].upper() + n[1:] + "." for n in view.notes)
    headers = ["figure", "client (records)", "server (/metrics)", "client - server"]
    return Table("Client against the server's own metrics", headers, rows, note)


def _telemetry_table(
    telemetry: pd.DataFrame,
    meta: Mapping[str, Any],
    requests: pd.DataFrame,
    start: float | None,
) -> Table | None:
    rows: list[list[str]] = []
    sources = meta.get("sources", {})
    for name, status in sources.items() if isinstance(sources, Mapping) else ():
        rows.append([f"source {name}", str(status)])
    if telemetry.empty:
        if not rows:
            return None
        rows.append(["samples", "0"])
        return Table("Telemetry", ["reading", "value"], rows, figures=False)
    rows.append(["samples", f"{len(telemetry)} (every {fmt(meta.get('interval_s'))} s)"])

    def col(name: str) -> pd.Series | None:
        if name in telemetry and telemetry[name].notna().any():
            return telemetry[name].astype(float)
        return None

    memory = col("gpu_mem_used_mib")
    if memory is not None:
        total = col("gpu_mem_total_mib")
        peak = f"{memory.max() / 1024:.2f} GiB"
        if total is not None:
            peak += f" of {total.max() / 1024:.2f} GiB"
        rows.append([f"GPU memory peak ({_memory_label(telemetry, meta)})", peak])
    for name, label, unit in (
        ("gpu_util_pct", "GPU utilisation mean / max (NVML)", "%"),
        ("metrics_kv_cache_usage", "KV cache usage mean / max (/metrics)", ""),
        ("metrics_waiting", "server queue mean / max (/metrics)", ""),
        ("stats_queued", "server queue mean / max (/stats)", ""),  # shown without /metrics
        ("host_cpu_pct", "host CPU mean / max (psutil)", "%"),
        ("client_cpu_pct", "client process CPU mean / max (psutil)", "%"),
    ):
        series = col(name)
        if name == "stats_queued" and col("metrics_waiting") is not None:
            continue
        if series is not None:
            rows.append([label, f"{fmt(series.mean())} / {fmt(series.max())}{unit}"])
    for name in sorted(c for c in telemetry.columns if c.endswith("_power_w")):
        series = col(name)
        if series is not None:
            figures = f"{fmt(series.mean())} / {fmt(series.max())} W"
            rows.append([f"{name[: -len('_power_w')]} power mean / max", figures])
    for name in sorted(c for c in telemetry.columns if c.endswith("_temp_c")):
        series = col(name)
        if series is not None:
            rows.append([f"{name[:-7]} temperature max", f"{fmt(series.max())} °C"])
    for name in sorted(c for c in telemetry.columns if c.endswith("_throttle")):
        seen = sorted(
            {r for v in telemetry[name].dropna().astype(str) for r in v.split("|") if r}
            - {"nan", "gpu_idle"}
        )
        rows.append([f"{name[:-9]} clock limits seen", ", ".join(seen) or "none"])
    energy = energy_columns(telemetry)
    if energy and start is not None:
        t = telemetry["t"].astype(float)
        joules = energy_between(telemetry, float(t.min()), float(t.max()))
        rows.append(["energy, all GPUs, whole run", f"{fmt(joules)} J"])
    note = "docs/telemetry.md lists every column."
    return Table("Telemetry", ["reading", "value"], rows, note, figures=False)


def _energy_by_step(
    requests: pd.DataFrame, telemetry: pd.DataFrame, step_order: Sequence[str]
) -> dict[str, float | None]:
    if requests.empty or telemetry.empty or not energy_columns(telemetry):
        return {}
    measured = requests[~requests["warmup"].astype(bool)]
    out: dict[str, float | None] = {}
    for step in step_order:
        rows = measured[measured["step"] == step] if step else measured
        if rows.empty:
            out[step] = None
            continue
        out[step] = joules_per_token(
            telemetry,
            float(rows["send"].min()),
            float(rows["end"].max()),
            output_tokens=int(rows["output_tokens"].sum()),
        )
    return out


def _memory_label(telemetry: pd.DataFrame, meta: Mapping[str, Any]) -> str | None:
    if "gpu_mem_source" not in telemetry or telemetry["gpu_mem_source"].dropna().empty:
        return None
    source = str(telemetry["gpu_mem_source"].dropna().iloc[-1])
    if source == "nvml":
        gpus = meta.get("gpus") or []
        names = sorted({str(g.get("name")) for g in gpus if isinstance(g, Mapping)})
        return f"NVML: {len(gpus)}× {', '.join(names)}" if names else "NVML"
    kinds = {
        "target /stats (emulated_kv)": "emulated KV reservation, from the target's /stats",
        "target /stats (torch_cuda)": "torch allocations, from the target's /stats",
        "target /stats": "from the target's /stats",
        "target /metrics": "from the target's /metrics",
    }
    return kinds.get(source, source)


def _facts(
    summary: RunSummary,
    config: RunConfig,
    requests: pd.DataFrame,
    start: float | None,
    meta: Mapping[str, Any],
) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    if summary.run_id:
        facts.append(("run", summary.run_id))
    target = config.url or meta.get("target_url")
    if config.launch is not None:
        serve = " ".join(config.launch)
        target = f"{target or 'reference server'} (launched: capplan serve {serve})"
    facts.append(("target", str(target or "-")))
    facts.append(("engine", summary.engine or "-"))
    stream = "-" if config.stream is None else config.stream
    facts.append(("endpoint", f"{config.endpoint or '-'}, stream={stream}"))
    steps = ", ".join(config.step_labels) or "-"
    facts.append(("load", f"{config.load_model or '-'}: {steps}"))
    if start is not None:
        when = datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        facts.append(("started", when))
    if not requests.empty:
        facts.append(("duration", f"{float(requests['end'].max()) - (start or 0):.1f} s"))
        facts.append(("requests recorded", f"{len(requests):,}"))
    if summary.interrupted:
        facts.append(("interrupted", "yes: figures cover what finished"))
    return facts


def _notes(steps: Sequence[StepSummary]) -> list[str]:
    notes: list[str] = []
    for s in steps:
        for note in s.notes:
            notes.append(f"{s.step}: {note}" if s.step and len(steps) > 1 else note)
    return list(dict.fromkeys(notes))


def _environment(env: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key, value in env.items():
        if key == "gpus":
            gpus = value or []
            text = "; ".join(
                f"{g.get('index')}: {g.get('name')}" for g in gpus if isinstance(g, Mapping)
            )
            out.append(("gpus", text or "none visible to NVML"))
        else:
            out.append((str(key), str(value)))
    return out
