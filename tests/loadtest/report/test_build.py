from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from capplan.errors import InputError
from capplan.loadtest.metrics import request_metrics
from capplan.loadtest.report.build import REBUILT_NOTE, build_reports

MakeRun = Callable[..., tuple[Path, list[Any]]]
Built = tuple[Path, list[Any], list[Path]]


def test_ladder_run_gets_parquet_plots_markdown_and_html(built_ladder: Built) -> None:
    run_dir, _, written = built_ladder
    names = {p.relative_to(run_dir).as_posix() for p in written}
    assert names == {
        "requests.parquet",
        "plots/ladder.png",
        "plots/distributions.png",
        "plots/timeline.png",
        "report.md",
        "report.html",
    }
    for path in written:
        assert path.stat().st_size > 0
    for png in run_dir.glob("plots/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained(built_ladder: Built) -> None:
    run_dir, _, _ = built_ladder
    html = (run_dir / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert len(sources) == 3
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in html and "<script" not in html
    assert "@import" not in html and "url(" not in html


def test_parquet_holds_every_request_with_its_metrics(built_ladder: Built) -> None:
    run_dir, records, _ = built_ladder
    frame = pd.read_parquet(run_dir / "requests.parquet")
    assert len(frame) == len(records)
    assert int((~frame["ok"]).sum()) == sum(not r.ok for r in records)
    row = frame.set_index("request_id").loc[records[5].request_id]
    expected = request_metrics(records[5])
    assert row["e2e_ms"] == pytest.approx(expected.e2e_ms)
    assert row["ttft_ms"] == pytest.approx(expected.ttft_ms)
    assert list(row["chunk_times"]) == pytest.approx(records[5].chunk_times)
    assert len(row["itl_ms"]) == len(records[5].chunk_times) - 1


def test_markdown_tables_carry_the_summary_figures_per_step(built_ladder: Built) -> None:
    run_dir, _, _ = built_ladder
    summary = json.loads((run_dir / "summary.json").read_text())
    markdown = (run_dir / "report.md").read_text()
    for step in summary["steps"]:
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {step['step']} |"))
        assert f"{step['ttft_ms']['p50']:.1f}" in line
    failed_step = summary["steps"][-1]
    status_line = [x for x in markdown.splitlines() if x.startswith("| concurrency=16 |")][-1]
    assert f"| {failed_step['requests']['by_status']['503']} |" in status_line
    assert "](plots/timeline.png)" in markdown


@pytest.mark.parametrize("gpus", [1, 2])
def test_energy_per_output_token_uses_the_step_window_and_every_gpu(
    make_run: MakeRun, gpus: int
) -> None:
    run_dir, records = make_run(concurrencies=(4,), per_step=30, gpus=gpus)
    build_reports(run_dir)
    measured = [r for r in records if not r.warmup]
    window = max(r.end for r in measured) - min(r.send for r in measured)
    tokens = sum(r.output_tokens for r in measured)
    expected = gpus * 200.0 * window / tokens  # each synthetic GPU draws a constant 200 W
    lines = (run_dir / "report.md").read_text().splitlines()
    at = next(i for i, x in enumerate(lines) if "J / output token" in x)
    header, row = lines[at], lines[at + 2]
    column = [c.strip() for c in header.split("|")].index("J / output token")
    assert float(row.split("|")[column]) == pytest.approx(expected, rel=0.01)


def test_missing_summary_is_rebuilt_from_the_records(make_run: MakeRun) -> None:
    run_dir, records = make_run(summary=False)
    written = build_reports(run_dir)
    assert run_dir / "summary.json" in written
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rebuilt"] == REBUILT_NOTE
    measured = [r for r in records if not r.warmup]
    assert summary["overall"]["requests"]["total"] == len(measured)
    assert [s["step"] for s in summary["steps"]] == [
        "concurrency=1",
        "concurrency=4",
        "concurrency=16",
    ]
    assert (run_dir / "report.html").exists()


def test_resummarize_keeps_config_and_environment(make_run: MakeRun) -> None:
    run_dir, _ = make_run()
    before = json.loads((run_dir / "summary.json").read_text())
    build_reports(run_dir, resummarize=True)
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["config"] == before["config"]
    assert after["environment"] == before["environment"]
    assert after["steps"][0]["ttft_ms"] == before["steps"][0]["ttft_ms"]


def test_resummarize_keeps_the_engines_locust_and_load_model_run_blocks(
    make_run: MakeRun,
) -> None:
    from capplan.loadtest.summary import apply_engine_block

    run_dir, _ = make_run(concurrencies=(1, 4), per_step=10, telemetry=False)
    before = json.loads((run_dir / "summary.json").read_text())
    block = {
        "runner": "local",
        "steps": [
            {"step": "concurrency=1", "mode": "closed", "how": "closed loop: 1 Locust user"},
            {"step": "concurrency=4", "mode": "closed", "how": "closed loop: 4 Locust users",
             "problem": "1 worker never reported"},
        ],
    }  # fmt: skip
    apply_engine_block(before, "locust", block)
    (run_dir / "summary.json").write_text(json.dumps(before))
    build_reports(run_dir, resummarize=True)
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["locust"] == block
    assert [s["load_model_run"] for s in after["steps"]] == [
        {"engine": "locust", "mode": "closed", "how": "closed loop: 1 Locust user"},
        {"engine": "locust", "mode": "closed", "how": "closed loop: 4 Locust users"},
    ]
    assert after["valid"] is False
    assert "locust concurrency=4: 1 worker never reported" in after["reasons"]


def test_a_killed_runs_summary_is_rebuilt_with_its_config_json(make_run: MakeRun) -> None:
    run_dir, _ = make_run(concurrencies=(2,), per_step=10, telemetry=False, summary=False)
    config = {"name": "killed", "seed": 7, "target": "http://127.0.0.1:9999", "steps": []}
    (run_dir / "config.json").write_text(json.dumps(config))
    build_reports(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"] == config


def test_run_without_telemetry_still_gets_load_figures(make_run: MakeRun) -> None:
    run_dir, _ = make_run(concurrencies=(2,), telemetry=False)
    written = build_reports(run_dir)
    names = {p.name for p in written}
    assert {"distributions.png", "timeline.png", "report.html"} <= names
    assert "ladder.png" not in names  # one step: nothing to plot against
    assert "### Telemetry" not in (run_dir / "report.md").read_text()


def test_torn_last_telemetry_row_is_ignored(make_run: MakeRun) -> None:
    run_dir, _ = make_run(concurrencies=(2,), per_step=10)
    with (run_dir / "telemetry.csv").open("a") as f:
        f.write("1700000099.0,3")  # a killed sampler's half row
    build_reports(run_dir)
    assert "(every 0.50 s)" in (run_dir / "report.md").read_text()


def test_directory_without_records_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no requests\.jsonl"):
        build_reports(tmp_path)


def test_open_loop_ladder_reports_latency_from_the_intended_start(make_run: MakeRun) -> None:
    run_dir, _ = make_run(concurrencies=(2, 8), per_step=20, telemetry=False, open_loop=True)
    written = build_reports(run_dir)
    assert run_dir / "plots" / "ladder.png" in written
    summary = json.loads((run_dir / "summary.json").read_text())
    markdown = (run_dir / "report.md").read_text()
    assert "latency p99 (from intended start)" in markdown
    row = next(x for x in markdown.splitlines() if x.startswith("| rate=8 |"))
    assert f"{summary['steps'][1]['latency_ms']['p99']:.0f}" in row.replace(",", "")


def test_two_gpus_are_named_and_summed_in_the_telemetry_table(make_run: MakeRun) -> None:
    run_dir, _ = make_run(concurrencies=(16,), per_step=20, gpus=2)
    written = build_reports(run_dir)
    assert run_dir / "plots" / "timeline.png" in written
    markdown = (run_dir / "report.md").read_text()
    peak = next(x for x in markdown.splitlines() if x.startswith("| GPU memory peak"))
    assert "NVML: 2× NVIDIA GeForce RTX 3080" in peak
    assert "of 20.00 GiB" in peak
    assert "| gpu1 power mean / max |" in markdown
    assert "| KV cache usage mean / max (/metrics) |" in markdown


def test_the_servers_own_view_is_reported_and_survives_a_resummarize(
    make_run: MakeRun,
) -> None:
    from capplan.loadtest.server_view import attach_server_view

    run_dir, records = make_run(concurrencies=(1, 4), per_step=10, telemetry=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    ok = [r for r in records if r.ok]
    tokens = float(sum(r.output_tokens for r in ok))
    before = {"ttft_sum": 5.0, "ttft_count": 100.0, "e2e_sum": 50.0, "e2e_count": 100.0}
    after = {"ttft_sum": 5.0 + 0.01 * len(ok), "ttft_count": 100.0 + len(ok)}
    after.update(e2e_sum=50.0 + 0.1 * len(ok), e2e_count=100.0 + len(ok), output_tokens=tokens)
    attach_server_view(summary, before, after, records)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    build_reports(run_dir, resummarize=True)
    rebuilt = json.loads((run_dir / "summary.json").read_text())
    assert rebuilt["server_view"]["server"]["ttft_mean_ms"] == pytest.approx(10.0)
    assert rebuilt["server_view"]["server"]["requests"] == len(ok)
    html = (run_dir / "report.html").read_text()
    assert "Client against the server&#x27;s own metrics" in html
    assert "server (/metrics)" in (run_dir / "report.md").read_text()
