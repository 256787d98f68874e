"""The step-model fit recovers known costs, says what the points did not constrain, and a
ladder against an emulated server of known timing comes back as that timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capplan.estimate.calibration import read_profile, write_profile
from capplan.estimate.roofline import Roofline
from capplan.planning.calibrate import (
    LadderPoint,
    ladder,
    measured_points,
    profile_from_points,
    run_ladder,
)
from capplan.planning.calibration_fit import DecodePoint, PrefillPoint, fit
from reference_server.emulated import EmulatedTiming

from ..regression.conftest import load_run_at

# A small model on a slow host: the floor and the per-sequence host work set every step.
ROOF = Roofline(
    weights_bytes=2 * 10**8,
    matmul_params=10**8,
    attention_width=2 * 8 * 64,
    kv_bytes_per_token=4096,
    bandwidth_bytes_s=100e9,
    tflops=10.0,
)


def test_fit_recovers_a_floor_a_per_sequence_cost_and_an_overhead_it_was_given() -> None:
    truth = Roofline(**{**ROOF.__dict__, "floor_ms": 20.0, "host_ms_per_sequence": 1.5})
    decode = [DecodePoint(b, b * 200, truth.decode_step_ms(b * 200, b)) for b in (1, 2, 4, 8, 16)]
    prefill = [PrefillPoint(p, 7.0 + truth.prefill_ms(p)) for p in (16, 256)]
    result = fit(ROOF, decode, prefill, default_floor_ms=50.0)
    assert result.floor_ms == pytest.approx(20.0, rel=0.05)
    assert result.host_ms_per_sequence == pytest.approx(1.5, rel=0.10)
    assert result.overhead_ms == pytest.approx(7.0, abs=1.0)
    assert {"floor", "per-sequence", "overhead"} <= set(result.measured)
    assert "bandwidth" not in result.measured  # never the binding term: kept at the default
    assert result.bandwidth_efficiency >= ROOF.bandwidth_efficiency
    assert result.rms_error < 0.05


def test_one_point_slowed_by_a_busy_host_barely_moves_the_fit() -> None:
    truth = Roofline(**{**ROOF.__dict__, "floor_ms": 10.0})
    decode = [DecodePoint(b, b * 200, truth.decode_step_ms(b * 200, b)) for b in (1, 2, 4, 8)]
    decode[2] = DecodePoint(4, 800, 5 * decode[2].step_ms)  # preempted for most of its run
    result = fit(ROOF, decode, [], default_floor_ms=50.0)
    assert result.floor_ms == pytest.approx(10.0, rel=0.10)


def test_fit_recovers_compute_efficiency_when_decode_and_prefill_slow_down_differently() -> None:
    # A 4-bit scheme: dequantizing slows the weights' read 3x and the matmuls 1.5x. The fitted
    # efficiency must be on the estimator's scale, or the calibrated estimate misprices decode.
    quantized = Roofline(**{**ROOF.__dict__, "weights_bytes": 5 * 10**7, "decode_slowdown": 3.0,
                            "prefill_slowdown": 1.5})  # fmt: skip
    truth = Roofline(**{**quantized.__dict__, "bandwidth_efficiency": 0.6,
                        "compute_efficiency": 0.3})  # fmt: skip
    batches = (1, 2, 4, 8, 32, 64, 128)
    decode = [DecodePoint(b, b * 200, truth.decode_step_ms(b * 200, b)) for b in batches]
    assert truth.decode_bound(128 * 200, 128) == "compute"
    prefill = [PrefillPoint(p, truth.prefill_ms(p)) for p in (16, 256, 1024)]
    result = fit(quantized, decode, prefill, default_floor_ms=1.0)
    assert "compute" in result.measured
    assert result.compute_efficiency == pytest.approx(0.3, rel=0.05)
    assert result.overhead_ms == pytest.approx(0.0, abs=0.5)
    assert result.rms_error < 0.05


def test_ladder_measures_each_prompt_alone_then_each_batch_short_and_long() -> None:
    assert ladder([16, 256], [1, 4]) == [
        LadderPoint(1, 16), LadderPoint(1, 256), LadderPoint(4, 16), LadderPoint(4, 256),
    ]  # fmt: skip


def test_a_ladder_against_an_emulated_server_of_known_timing_comes_back_as_that_timing(
    tmp_path: Path, serve_emulated
) -> None:
    # Steps of 30 ms + 5 ms per sequence: large against the client's own overhead here.
    timing = EmulatedTiming(floor_ms=30.0, host_ms_per_sequence=5.0, kv_bytes_per_token=4096)
    with serve_emulated(timing) as url:

        def run_point(point: LadderPoint, where: Path) -> list:
            result = load_run_at(
                url, where, concurrency=point.concurrency, requests=3 * point.concurrency,
                prompt_tokens=point.prompt_tokens, max_tokens=12,
            )  # fmt: skip
            return result.records

        records = run_ladder(ladder([16], [1, 4]), run_point, tmp_path)
    profile = profile_from_points(
        measured_points(records), ROOF, runtime="hf", gpu="cpu", model="test", layers=2,
        default_floor_ms=1.0, source="test",
    )  # fmt: skip
    assert profile.floor_ms == pytest.approx(30.0, rel=0.25)
    assert profile.floor_ms + 4 * profile.host_ms_per_sequence == pytest.approx(50.0, rel=0.25)
    assert profile.largest_batch == 4
    # The profile survives its file, and the file says what it is.
    path = write_profile(profile, tmp_path / "calibration.json")
    again = read_profile(path)
    assert again.floor_ms_per_layer == profile.floor_ms_per_layer and again.path == str(path)
    assert json.loads(path.read_text())["kind"] == "capplan-calibration"
