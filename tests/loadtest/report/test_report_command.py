from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from capplan.cli import app, main


def test_capplan_report_rebuilds_reports_and_a_missing_summary(
    make_run: Callable[..., tuple[Path, list[Any]]],
) -> None:
    run_dir, _ = make_run(concurrencies=(2,), per_step=12, summary=False)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].strip() == str(run_dir / "report.html")
    for name in ("summary.json", "requests.parquet", "report.md", "report.html"):
        assert (run_dir / name).is_file()
        assert str(run_dir / name) in result.output


def test_capplan_report_on_a_directory_without_records_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["capplan", "report", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: no requests.jsonl in ")
