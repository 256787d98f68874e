"""Every report of a run directory, rebuilt from its records.

Reads requests.jsonl, telemetry.csv (+ telemetry.json) and summary.json; writes
requests.parquet, plots/*.png, report.md and a self-contained report.html. A missing
summary.json is rebuilt from the records with `capplan.loadtest.summary.summarize`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capplan.errors import InputError
from capplan.loadtest.record import RequestRecord, read_records
from capplan.loadtest.summary import write_json
from capplan.loadtest.summary_model import RunSummary

REBUILT_NOTE = "summary rebuilt by `capplan report` from requests.jsonl"


def build_reports(
    run_dir: Path, *, resummarize: bool = False, records: list[RequestRecord] | None = None
) -> list[Path]:
    """Write the reports; returns the paths written.

    `resummarize` recomputes summary.json from the records even when one exists, keeping its
    config, environment and client self-check (which records alone do not hold). `records`:
    the run's requests.jsonl already in memory (a load test that just wrote it), not read again.
    """
    from capplan.loadtest.report.content import build_content
    from capplan.loadtest.report.frame import read_telemetry, read_telemetry_meta, requests_frame
    from capplan.loadtest.report.html import render_html
    from capplan.loadtest.report.markdown import render_markdown

    run_dir = Path(run_dir)
    if records is None:
        records = _read_run_records(run_dir)
    written: list[Path] = []
    data = _read_json(run_dir / "summary.json")
    if data is None or resummarize:
        if data is None:
            # A run killed before its summary: the config, if the engine saved it apart.
            config = _read_json(run_dir / "config.json")
            data = {"config": config} if config is not None else None
        data = _resummarize(records, RunSummary.from_dict(data or {}), run_dir.name)
        write_json(run_dir / "summary.json", data)
        written.append(run_dir / "summary.json")
    summary = RunSummary.from_dict(data)

    requests = requests_frame(records)
    parquet = run_dir / "requests.parquet"
    requests.to_parquet(parquet, engine="pyarrow", index=False)
    written.append(parquet)

    telemetry = read_telemetry(run_dir / "telemetry.csv")
    meta = read_telemetry_meta(run_dir / "telemetry.json")
    content = build_content(summary, requests, telemetry, meta)

    plot_dir = run_dir / "plots"
    plot_paths: dict[str, str] = {}
    if content.plots:
        plot_dir.mkdir(exist_ok=True)
    for plot in content.plots:
        path = plot_dir / f"{plot.name}.png"
        path.write_bytes(plot.png)
        plot_paths[plot.name] = f"plots/{path.name}"
        written.append(path)

    markdown = run_dir / "report.md"
    markdown.write_text(render_markdown(content, plot_paths), encoding="utf-8")
    html = run_dir / "report.html"
    html.write_text(render_html(content), encoding="utf-8")
    written += [markdown, html]
    return written


def _read_run_records(run_dir: Path) -> list[RequestRecord]:
    records_path = run_dir / "requests.jsonl"
    if not records_path.is_file():
        raise InputError(
            f"no requests.jsonl in {run_dir}; pass a directory written by `capplan loadtest`"
        )
    return read_records(records_path)


def _resummarize(records: list[RequestRecord], old: RunSummary, run_id: str) -> dict[str, Any]:
    """summary.json from the records, with what the old summary (if any) held beside them."""
    from capplan.loadtest.server_view import attach_server_view
    from capplan.loadtest.summary import apply_engine_block, attach_load_model_runs, summarize

    selfcheck = {label: check.to_dict() for label, check in old.client_checks().items()}
    environment = old.environment or {
        "note": "not recorded: summary.json was missing when `capplan report` rebuilt it"
    }
    summary = summarize(
        records,
        old.config.to_dict() or None,
        selfcheck=selfcheck or None,
        environment=environment,
        interrupted=old.interrupted,
        engine=old.engine or "unknown",
        run_id=old.run_id or run_id,
        stopped=old.stopped.to_dict() if old.stopped is not None else None,
    )
    if old.started_at is not None:
        summary["started_at"] = old.started_at
    if old.ended_at is not None:
        summary["ended_at"] = old.ended_at
    # What the engine added beside the figures (records alone do not hold it).
    runs = {label: run.to_dict() for label, run in old.load_model_runs().items()}
    attach_load_model_runs(summary, runs)
    for engine_name, block in old.engine_blocks.items():
        apply_engine_block(summary, engine_name, block)
    if old.server_view is not None:
        view = old.server_view
        attach_server_view(summary, view.before, view.after, records)
    summary["rebuilt"] = REBUILT_NOTE
    return summary


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
