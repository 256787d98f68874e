"""`capplan compare BASELINE CURRENT`: per-metric deltas and a regression verdict for CI."""

from __future__ import annotations

from pathlib import Path

import typer

EXIT_PASS = 0
EXIT_REGRESSION = 1


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("compare")(compare)


def compare(
    baseline: Path = typer.Argument(..., help="Baseline run directory or its summary.json."),
    current: Path = typer.Argument(..., help="Current run directory or its summary.json."),
    max_regression: list[str] = typer.Option(
        [],
        "--max-regression",
        help="How much worse a metric may get: 'p95_e2e_ms=10%', 'p95(ttft)=50ms', "
        "'error_rate=0.01' (absolute). Repeatable. Default: p95 TTFT/E2E and p50 TPOT 25%, "
        "error rate +0.01.",
    ),
    alpha: float = typer.Option(
        0.05, help="Significance level of the test on raw records (noise is not a regression)."
    ),
    markdown: Path | None = typer.Option(
        None, "--markdown", help="Also write a Markdown table for a pull-request comment."
    ),
    junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
    output: str = typer.Option("table", "--format", help="Standard output: table|markdown."),
) -> None:
    """Compare two runs. Exit 0: pass, 1: a metric regressed, 2: bad input."""
    import json

    from capplan.errors import InputError
    from capplan.regression.compare import compare_runs
    from capplan.regression.runs import load_run
    from capplan.render.console import stdout_console
    from capplan.render.regression import comparison_table
    from capplan.render.regression_ci import comparison_junit, comparison_markdown

    if output not in ("table", "markdown"):
        raise InputError("--format must be table or markdown")
    result = compare_runs(load_run(baseline), load_run(current), max_regression, alpha=alpha)
    if output == "markdown":
        typer.echo(comparison_markdown(result), nl=False)
    else:
        stdout_console().print(comparison_table(result))
    if markdown is not None:
        markdown.write_text(comparison_markdown(result), encoding="utf-8")
    if junit is not None:
        junit.write_text(comparison_junit(result), encoding="utf-8")
    if json_out is not None:
        rows = [
            {
                "metric": r.metric,
                "step": r.step,
                "baseline": r.baseline,
                "current": r.current,
                "delta": r.delta,
                "delta_pct": r.delta_pct,
                "limit": r.limit.text if r.limit else None,
                "p_value": r.p_value,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "test": r.test,
                "verdict": r.verdict,
            }
            for r in result.rows
        ]
        payload = {"passed": result.passed, "alpha": result.alpha, "rows": rows}
        json_out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    raise typer.Exit(EXIT_PASS if result.passed else EXIT_REGRESSION)
