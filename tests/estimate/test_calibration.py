"""Calibration profiles: what estimate does with one, and a bad file is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capplan.cli import app
from capplan.errors import InputError
from capplan.estimate.calibration import CalibrationProfile, read_profile, write_profile
from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.model_spec import resolve_model


def profile(**changes: object) -> CalibrationProfile:
    values: dict = dict(
        runtime="hf", gpu="h200", model="qwen3-8b", layers=36, floor_ms_per_layer=1.0,
        host_ms_per_sequence=0.1, bandwidth_efficiency=0.7, compute_efficiency=0.4,
        overhead_ms=5.0, measured=("floor", "per-sequence", "overhead"), source="test",
        points=({"batch": 1}, {"batch": 32}),
    )  # fmt: skip
    values.update(changes)
    return CalibrationProfile(**values)


def test_a_calibrated_estimate_uses_the_profile_and_says_so(tmp_path: Path) -> None:
    path = write_profile(profile(), tmp_path / "cal.json")
    request = EstimateRequest(resolve_gpu("h200"), resolve_model("qwen3-8b"), 512, 128,
                              calibration=read_profile(path))  # fmt: skip
    r = estimate(request)
    assert r.timing.calibrated and str(path) in r.timing.basis
    assert r.timing.floor_ms == pytest.approx(36.0)
    assert r.timing.decode_ms_per_token_c1 == pytest.approx(36.1)
    # Past the largest batch it measured, the step time would be extrapolated.
    assert r.concurrency == 32 and r.concurrency_bound.startswith("calibration")
    assert not any("measured on" in n for n in r.notes)


def test_a_profile_from_another_gpu_is_applied_with_a_note(tmp_path: Path) -> None:
    path = write_profile(profile(gpu="cpu"), tmp_path / "cal.json")
    request = EstimateRequest(resolve_gpu("h200"), resolve_model("qwen3-8b"),
                              calibration=read_profile(path))  # fmt: skip
    assert any("measured on cpu, applied to h200" in n for n in estimate(request).notes)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read calibration"),
        ("{not json", "is not JSON"),
        ('{"kind": "something-else"}', "is not a capplan calibration"),
        ('{"kind": "capplan-calibration", "schema_version": "9.0"}', "run capplan calibrate again"),
        ('{"kind": "capplan-calibration", "schema_version": "1.0"}', "missing calibration fields"),
    ],
)
def test_a_bad_calibration_file_is_one_line_naming_the_fix(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "cal.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_profile(path)
    result = CliRunner().invoke(
        app, ["estimate", "--gpu", "h200", "--model", "qwen3-8b", "--calibration", str(path)]
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output


def test_an_efficiency_outside_a_fraction_is_refused(tmp_path: Path) -> None:
    data = profile(compute_efficiency=7.0).to_dict()
    (tmp_path / "cal.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="compute_efficiency"):
        read_profile(tmp_path / "cal.json")
