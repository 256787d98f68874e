"""calibrate and validate through the CLI: the runtime a profile is labelled with, and the runs
validate refuses to compare."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from typer.testing import CliRunner

from capplan.cli import app
from capplan.commands.calibrate import measured_runtime
from capplan.loadtest.summary import summarize
from capplan.loadtest.summary_model import RunSummary

from ..regression.conftest import synthetic_run, write_run

EMBEDDED = ["--model", "embedded", "--gpu", "cpu"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})
    return result.exit_code, result.output


def test_calibrate_from_a_finished_run_labels_the_profile_hf(tmp_path: Path) -> None:
    run = write_run(synthetic_run(1, ttft_ms=50, tpot_ms=10, n=12), tmp_path / "run")
    out = tmp_path / "calibration.json"
    code, output = invoke("calibrate", *EMBEDDED, "--from", str(run), "--out", str(out))
    assert code == 0, output
    profile = json.loads(out.read_text())
    assert profile["runtime"] == "hf" and "--runtime hf" in profile["source"]


def test_calibrate_defaults_to_the_engine_it_launches_and_hf_behind_a_url() -> None:
    assert measured_runtime(None, None, None) == "capplan"  # launches capplan serve
    assert measured_runtime(None, "http://127.0.0.1:8000", None) == "hf"
    assert measured_runtime(None, None, Path("run")) == "hf"
    assert measured_runtime("vllm", "http://127.0.0.1:8000", None) == "vllm"


def test_validate_will_not_emulate_another_runtime_than_hf() -> None:
    code, output = invoke("validate", *EMBEDDED, "--runtime", "vllm")
    assert code == 2
    assert "--runtime vllm cannot be emulated" in output and "--url" in output


def test_validate_does_not_compare_a_run_that_stopped_early(tmp_path: Path) -> None:
    run = synthetic_run(1, ttft_ms=50, tpot_ms=10, n=6)
    config = {"steps": ["concurrency=4"], "concurrency": [4], "rate": [],
              "prompt_tokens": {"dist": "fixed", "value": 16},
              "max_tokens": {"dist": "fixed", "value": 16}}  # fmt: skip
    stop = {"step": "concurrency=4", "reason": "every request in 5s refused (503)"}
    summary = RunSummary.from_dict(summarize(run.records, config, stopped=stop))
    folder = write_run(replace(run, summary=summary), tmp_path / "run")
    shape = ["--prompt-tokens", "16", "--max-tokens", "16", "--concurrency", "4"]
    code, output = invoke("validate", *EMBEDDED, *shape, "--run", str(folder))
    assert code == 3, output
    assert "stopped early in concurrency=4" in output
    assert "TTFT" not in output  # no table: nothing was compared
