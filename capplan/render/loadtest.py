"""Load-test output: the live progress line and the end-of-run table (rich)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from capplan.loadtest.live import ProgressSnapshot
from capplan.loadtest.summary_blocks import Stats
from capplan.loadtest.summary_model import RunSummary
from capplan.loadtest.summary_run_blocks import ServerView


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f}s" if value >= 10_000 else f"{value:.0f}ms"


def progress_text(snap: ProgressSnapshot) -> Text:
    """One line: elapsed, step, sent/finished/failed, rolling p50/p95, tokens/s, GPU memory."""
    text = Text()
    text.append(f"{snap.elapsed_s:6.1f}s ", style="bold")
    text.append(f"[{snap.step_index + 1}/{snap.steps}] {snap.step}  ", style="cyan")
    text.append(f"sent {snap.sent}  done {snap.finished}  ")
    text.append(f"failed {snap.failed}  ", style="red" if snap.failed else "")
    text.append(f"in flight {snap.in_flight}  ")
    text.append(f"TTFT p50/p95 {_ms(snap.ttft_p50_ms)}/{_ms(snap.ttft_p95_ms)}  ")
    text.append(f"E2E p50/p95 {_ms(snap.e2e_p50_ms)}/{_ms(snap.e2e_p95_ms)}  ")
    text.append(f"{snap.output_tokens_per_s:.0f} tok/s")
    memory = _gpu_memory(snap.telemetry)
    if memory:
        text.append(f"  {memory}", style="magenta")
    return text


def _gpu_memory(sample: Mapping[str, Any]) -> str | None:
    """GPU memory and utilisation from the sampler's latest() row, with its source."""
    used, total = sample.get("gpu_mem_used_mib"), sample.get("gpu_mem_total_mib")
    if not isinstance(used, int | float):
        return None
    text = f"GPU mem {used / 1024:.1f}"
    text += f"/{total / 1024:.1f} GiB" if isinstance(total, int | float) else " GiB"
    util = sample.get("gpu_util_pct")
    if isinstance(util, int | float):
        text += f" util {util:.0f}%"
    source = sample.get("gpu_mem_source")
    return f"{text} ({source})" if source else text


class LiveProgress:
    """A rich Live display fed by the runner's progress callback."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._live = Live(Text("starting..."), console=self.console, refresh_per_second=4)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def __call__(self, snap: ProgressSnapshot) -> None:
        self._live.update(progress_text(snap))


def _p(stats: Stats | None, stat: str) -> float | None:
    return None if stats is None else stats.value(stat)


def summary_table(summary: RunSummary) -> Table:
    """One row per step: requests, latency percentiles, throughput, goodput, validity."""
    table = Table(title=f"capplan loadtest: {summary.config.name or ''}")
    for column in (
        "step",
        "ok/failed",
        "TTFT p50/p95/p99",
        "TPOT p50/p95",
        "ITL p95",
        "E2E p50/p95",
        "req/s",
        "tok/s",
        "goodput",
        "figures valid",
    ):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step in summary.steps:
        requests, throughput, fraction = step.requests, step.throughput, step.goodput.fraction
        table.add_row(
            step.step,
            f"{requests.ok or 0}/{requests.failed or 0}",
            "/".join(_ms(_p(step.ttft_ms, s)) for s in ("p50", "p95", "p99")),
            "/".join(_ms(_p(step.tpot_ms, s)) for s in ("p50", "p95")),
            _ms(_p(step.itl_ms, "p95")),
            "/".join(_ms(_p(step.e2e_ms, s)) for s in ("p50", "p95")),
            _num(throughput.requests_per_s, 2),
            _num(throughput.output_tokens_per_s, 0),
            f"{fraction:.0%}" if fraction is not None else "-",
            "yes" if step.valid else "NO",
        )
    return table


def _num(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def print_result(
    console: Console,
    summary: RunSummary,
    out_dir: Path,
    reports: Sequence[Path],
    report_error: str | None,
    thresholds: Sequence[Any],
) -> None:
    """The end-of-run view: table, statuses, validity, thresholds, where the files are."""
    parts: list[Any] = [summary_table(summary)]
    for step in summary.steps:
        requests = step.requests
        statuses, errors = requests.by_status, requests.by_error
        if set(statuses) - {"200"} or errors:
            line = f"{step.step}: by status {statuses}"
            if errors:  # a 200 can fail too: a dropped stream, a timeout mid-answer
                line += f"; failed by error class {errors}"
            parts.append(Text(line, style="yellow"))
            for kind, detail in requests.error_examples.items():
                parts.append(Text(f"    e.g. {kind}: {detail or '(no detail)'}", style="dim"))
        for note in step.notes:
            parts.append(Text(f"note ({step.step}): {note}", style="dim"))
    if summary.server_view is not None:
        parts.append(Text(server_view_line(summary.server_view), style="dim"))
    if summary.valid:
        parts.append(Text("run valid: the client kept up with the load", style="green"))
    else:
        parts.append(Text("run NOT valid:", style="bold red"))
        parts.extend(Text(f"  - {reason}", style="red") for reason in summary.reasons)
    for result in thresholds:
        where = f" [{result.step}]" if getattr(result, "step", None) else ""
        actual = "missing" if result.actual is None else f"{result.actual:g}"
        style = "green" if result.passed else "bold red"
        verdict = "pass" if result.passed else "FAIL"
        parts.append(Text(f"threshold {result.expression}{where}: {actual} {verdict}", style=style))
    parts.append(Text(f"records:  {out_dir / 'requests.jsonl'}"))
    parts.append(Text(f"summary:  {out_dir / 'summary.json'}"))
    for path in reports:
        parts.append(Text(f"report:   {path}"))
    if report_error:
        parts.append(Text(f"reports not built: {report_error}", style="yellow"))
    console.print(Group(*parts))


def server_view_line(view: ServerView) -> str:
    """The client's means against the server's own /metrics, in one line."""
    server, client = view.server, view.client
    parts = []
    for name, c, s in (
        ("TTFT", client.ttft_mean_ms, server.ttft_mean_ms),
        ("E2E", client.e2e_mean_ms, server.e2e_mean_ms),
    ):
        if c is not None and s is not None:
            parts.append(f"{name} mean client {c:.1f} / server {s:.1f} ms ({c - s:+.1f})")
    tokens_c, tokens_s = client.output_tokens, server.output_tokens
    if tokens_s is not None:
        same = "match" if tokens_c == tokens_s else "DIFFER"
        parts.append(f"output tokens {tokens_c} / {tokens_s} ({same})")
    return "server's own /metrics: " + ("; ".join(parts) or "no comparable figures")


def ceiling_table(result: Any, server: str) -> Group:
    """`capplan selftest`: requests/s, then TTFT error per stream concurrency."""
    table = Table(title="client ceiling: TTFT error by concurrent streams")
    for column in ("streams", "TTFT p50", "TTFT p99", "error p50", "error p99", "loop lag p99",
                   "loop CPU", "failed"):  # fmt: skip
        table.add_column(column, justify="right")
    for s in result.streams:
        table.add_row(
            str(s.concurrency),
            f"{s.ttft_p50_ms:.1f}ms",
            f"{s.ttft_p99_ms:.1f}ms",
            f"{s.error_p50_ms:+.2f}ms",
            f"{s.error_p99_ms:+.2f}ms",
            f"{s.loop_lag_p99_ms:.1f}ms",
            f"{s.loop_cpu_fraction:.0%}",
            str(s.failed),
        )
    bound = "client-bound" if result.requests_loop_cpu_fraction > 0.9 else "server-bound"
    lines: list[Any] = [
        Text(
            f"non-streamed requests/s: {result.requests_per_s:.0f} "
            f"(client loop CPU {result.requests_loop_cpu_fraction:.0%}: {bound})",
            style="bold",
        ),
        table,
        Text(
            f"streams held with median TTFT error < 2 ms: {result.streams_held} "
            f"(emulated TTFT {result.ttft_ms:g} ms, TPOT {result.tpot_ms:g} ms; "
            f"offset at concurrency 1: {result.offset_ms:.2f} ms; server in a {server})",
            style="bold",
        ),
    ]
    return Group(*lines)
