"""Terminal tables for thresholds, compare, sweep, plan and validate results (rich)."""

from __future__ import annotations

import math

from rich.console import Group
from rich.table import Table
from rich.text import Text

from capplan.planning.plan import ReplicaPlan
from capplan.planning.sweep_result import SweepResult
from capplan.planning.validate import Validation
from capplan.regression.compare import Comparison, MetricComparison

_VERDICT_STYLE = {
    "regression": "bold red",
    "noise": "yellow",
    "pass": "green",
    "improved": "bold green",
    "info": "dim",
    "missing": "yellow",
}


def fmt(value: float | None, metric: str = "") -> str:
    """A figure with the precision its size deserves; rates as %."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    if metric == "error_rate":
        return f"{100 * value:.2f}%"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def comparison_table(comparison: Comparison) -> Group:
    table = Table(
        title=f"{comparison.current}  vs baseline  {comparison.baseline}", title_justify="left"
    )
    for name, justify in (
        ("metric", "left"),
        ("baseline", "right"),
        ("current", "right"),
        ("delta", "right"),
        ("limit", "right"),
        ("p (worse)", "right"),
        ("verdict", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in comparison.rows:
        table.add_row(
            row.label,
            fmt(row.baseline, row.metric),
            fmt(row.current, row.metric),
            delta_text(row),
            row.limit.text.split("=", 1)[1] if row.limit else "",
            p_text(row),
            Text(row.verdict, style=_VERDICT_STYLE[row.verdict]),
        )
    if comparison.passed:
        verdict = Text("PASS: no metric regressed beyond its limit", style="bold green")
    else:
        names = ", ".join(r.label for r in comparison.regressions)
        verdict = Text(f"REGRESSION: {names}", style="bold red")
    warnings = [Text(f"warning: {w}", style="yellow") for w in comparison.warnings]
    return Group(table, *warnings, verdict)


def p_text(row: MetricComparison) -> str:
    """The test's one-sided p, or why no test ran on a limited metric (never a silent blank)."""
    if row.p_value is not None:
        return f"{row.p_value:.3f}"
    if row.limit is None or row.verdict == "missing":
        return ""
    return "skipped" if row.test.startswith("skipped") else "n/a"


def delta_text(row: MetricComparison) -> str:
    if row.delta is None:
        return "-"
    if row.metric == "error_rate":
        return f"{100 * row.delta:+.2f} pt"
    pct = row.delta_pct
    return f"{row.delta:+.3g}" + (f" ({pct:+.1f}%)" if pct is not None else "")


# A sweep table's figure columns: header, flat figure name, and whether the spread across
# repeats is shown beside the median.
_SWEEP_COLUMNS = (
    ("p50 TTFT ms", "p50_ttft_ms", True),
    ("p95 TTFT ms", "p95_ttft_ms", True),
    ("p50 TPOT ms", "p50_tpot_ms", False),
    ("p95 E2E ms", "p95_e2e_ms", True),
    ("req/s", "requests_per_s", False),
    ("tok/s", "output_tokens_per_s", False),
    ("errors", "error_rate", False),
)


def sweep_table(result: SweepResult) -> Group:
    table = Table(title=f"Sweep over {result.axis}", title_justify="left")
    for name in (result.axis, *(header for header, _, _ in _SWEEP_COLUMNS)):
        table.add_column(name, justify="right")
    table.add_column("SLO")
    for p in result.points:
        status = "[green]pass[/]" if p.passed else f"[red]fail: {', '.join(p.broken)}[/]"
        if p.saturated:
            status = "[yellow]saturated[/]"
        if p.invalid:
            status += " [yellow](invalid run*)[/]"
        table.add_row(
            f"{p.load:g}" + ("" if p.phase == "ladder" else " (b)"),
            *(
                _with_spread(p.figures.get(name), p.spread.get(name) if spread else None, name)
                for _, name, spread in _SWEEP_COLUMNS
            ),
            status,
        )
    lines = [
        f"highest safe {result.axis}: {_or_none(result.highest_safe)}"
        f"   (SLOs: {'; '.join(result.slos)})",
        f"first failure: {_or_none(result.first_failure)}   stopped by: {result.stop_reason}",
        f"first 429/503: {_or_none(result.first_rejection)}   knee: {_or_none(result.knee)}",
    ]
    if result.plot:
        lines.append(f"plot: {result.plot}")
    invalid = [p for p in result.points if p.invalid]
    if invalid:
        where = ", ".join(f"{p.load:g}" for p in invalid)
        lines.append(
            f"* invalid at {result.axis} {where}: {invalid[0].invalid[0]}; "
            "rerun on a quieter machine or with a faster client"
        )
    return Group(table, *(Text(line) for line in lines))


def _with_spread(value: float | None, spread: tuple[float, float] | None, metric: str = "") -> str:
    if spread is None:
        return fmt(value, metric)
    return f"{fmt(value)} [{fmt(spread[0])}-{fmt(spread[1])}]"


def _or_none(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def plan_table(plan: ReplicaPlan) -> Group:
    profile = plan.profile
    head = [
        f"target {plan.target_rps:g} req/s, headroom {plan.headroom:.0%}: "
        f"sized for {plan.design_rps:.3g} req/s",
        f"per replica: {profile.slots} concurrent, {profile.service_time_s * 1000:.0f} ms mean "
        f"service, capacity {profile.capacity_rps:.3g} req/s, service cv2 "
        f"{profile.service_cv2:.2f} ({profile.source})",
    ]
    if plan.unattainable:
        return Group(
            *(Text(line) for line in head),
            *(Text(f"unattainable: {u}", style="bold red") for u in plan.unattainable),
        )
    table = Table(title="Replica options (M/G/c per replica, Allen-Cunneen)", title_justify="left")
    table.add_column("replicas", justify="right")
    table.add_column("utilization", justify="right")
    table.add_column("P(wait)", justify="right")
    for slo in plan.chosen.predictions if plan.chosen else ():
        table.add_column(f"{slo.threshold.expression} (pred.)", justify="right")
    table.add_column("meets SLOs")
    for option in plan.options:
        marker = " <" if plan.chosen and option.replicas == plan.chosen.replicas else ""
        table.add_row(
            f"{option.replicas}{marker}",
            f"{option.tail.utilization:.0%}",
            f"{option.tail.p_wait:.3f}" if option.tail.stable else "unstable",
            *(fmt(p.predicted, p.threshold.metric) for p in option.predictions),
            "[green]yes[/]" if option.passed else "[red]no[/]",
        )
    if plan.chosen is None:
        tail = Text("no replica count meets the SLOs", style="bold red")
    else:
        replicas, per = plan.chosen.replicas, plan.gpus_per_replica
        tail = Text(
            f"plan: {_plural(replicas, 'replica')} x {_plural(per, 'GPU')}"
            f" = {_plural(replicas * per, 'GPU')}; "
            f"utilization at the target rate {plan.utilization_at_target:.0%}",
            style="bold",
        )
    return Group(*(Text(line) for line in head), table, tail)


def validation_table(validation: Validation) -> Table:
    table = Table(title=f"Estimate vs measured: {validation.subject}", title_justify="left")
    table.add_column("figure")
    table.add_column("estimate", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("error", justify="right")
    table.add_column("note")
    for row in validation.rows:
        err = row.error_pct
        style = "red" if row.agrees(validation.tolerance_pct) is False else ""
        count = "concurrency" in row.name  # a whole number of requests
        table.add_row(
            row.name,
            _count(row.estimate) if count else fmt(row.estimate),
            _count(row.measured) if count else fmt(row.measured),
            Text("-" if err is None else f"{err:+.1f}%", style=style),
            row.note,
        )
    return table


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
