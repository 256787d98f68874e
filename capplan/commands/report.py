"""`capplan report RUN_DIR`: rebuild every report of a load-test run from its records."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `capplan report` to the root app."""
    app.command("report")(report)


def report(
    run_dir: Path = typer.Argument(
        ..., help="A run directory written by `capplan loadtest` (holds requests.jsonl)."
    ),
    resummarize: bool = typer.Option(
        False,
        "--resummarize",
        help="Recompute summary.json from the records too (it is always rebuilt when missing).",
    ),
) -> None:
    """Rebuild requests.parquet, report.md and report.html (and a missing summary.json)."""
    from capplan.loadtest.report.build import build_reports
    from capplan.render.report import render_written

    written = build_reports(run_dir, resummarize=resummarize)
    typer.echo(render_written(run_dir, written))
