"""`capplan serve` is registered and offers every limit as a flag."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from capplan.cli import app


def test_capplan_serve_lists_the_admission_flags() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    for flag in ("--max-concurrent", "--queue-size", "--queue-timeout", "--request-timeout",
                 "--rate-limit", "--vram-guard", "--drain-timeout", "--api-key", "--config",
                 "--ttft-ms", "--tpot-ms", "--server", "--workers", "--strict"):  # fmt: skip
        assert flag in text, flag


def test_bad_setting_is_an_input_error_before_anything_starts() -> None:
    result = CliRunner().invoke(app, ["serve", "--backend", "emulated", "--max-concurrent", "0"])
    # The root app turns InputError into one `error: ...` line and exit 2.
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert "max_concurrent must be at least 1" in result.stderr
