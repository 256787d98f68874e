"""The closed loop on this CPU: calibrate against the embedded model, estimate with that profile,
serve the settings it emits, and validate the estimate against the running server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from capplan.cli import app
from capplan.loadtest.launch import launched_server

# The bound for a calibrated estimate on the same host.
TOLERANCE_PCT = 25
TIMING_ROWS = ("TTFT ms (p50)", "decode ms/token (p50 TPOT)", "E2E ms (mean)")
CALIBRATE = ["--concurrency", "1,2,4,8", "--prompt-tokens", "16,128", "--max-tokens", "32"]
WORKLOAD = ["--prompt-tokens", "64", "--max-tokens", "64"]


def capplan(*args: str) -> int:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})
    # validate: 1 when a row disagrees; a crash is an exit of 1 too, so it is told apart.
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert result.exit_code in (0, 1) and not crashed, (result.output, result.exception)
    return result.exit_code


def loop(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """calibrate -> estimate --emit -> serve --config -> validate: (rows, settings, requests)."""
    calibration, settings = str(folder / "calibration.json"), folder / "server.json"
    # `capplan serve`'s own engine: the runtime calibrate measures when it launches the server.
    model = ["--model", "embedded", "--gpu", "cpu", "--runtime", "capplan"]
    capplan("calibrate", *model, *CALIBRATE, "--rounds", "3", "--out", calibration,
            "--run-dir", str(folder / "calibrate"))  # fmt: skip
    capplan("estimate", *model, "--calibration", calibration, *WORKLOAD,
            "--emit", "json", str(settings))  # fmt: skip
    emitted = json.loads(settings.read_text())
    with launched_server(["--config", str(settings)], log_path=folder / "server.log") as url:
        capplan("validate", *model, "--url", url, "--calibration", calibration, *WORKLOAD,
                "--concurrency", str(emitted["max_concurrent"]), "--requests", "96",
                "--tolerance", str(TOLERANCE_PCT), "--out", str(folder / "validate"),
                "--json", str(folder / "validation.json"))  # fmt: skip
    validation = json.loads((folder / "validation.json").read_text())
    summary = json.loads((folder / "validate" / "summary.json").read_text())
    return {row["name"]: row for row in validation["rows"]}, emitted, summary["requests"]


@pytest.mark.slow
def test_calibrated_estimate_of_the_embedded_model_holds_against_the_settings_it_emits(
    tmp_path: Path,
) -> None:
    rows, emitted, requests = loop(tmp_path / "first")
    if not all(rows[name]["agrees"] for name in TIMING_ROWS):
        # Both halves are a few seconds of load on a shared machine: one burst of other work in
        # either shifts its medians. The loop is measured again, once, from the calibration on.
        rows, emitted, requests = loop(tmp_path / "again")
    for name in TIMING_ROWS:
        assert rows[name]["agrees"], (name, rows[name])
    assert requests["failed"] == 0 and requests["ok"] == requests["total"] >= 96, requests
    # The settings hold: timeouts with room, the model's own context, a person's thread count.
    assert emitted["request_timeout_s"] >= 10 and emitted["max_context"] == 4096
    assert emitted["threads"] == 1 and emitted["max_concurrent"] >= 1
