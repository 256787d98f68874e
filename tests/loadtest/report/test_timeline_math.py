from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from capplan.loadtest.record import RequestRecord
from capplan.loadtest.report.energy import energy_between, joules_per_token
from capplan.loadtest.report.frame import in_flight, requests_frame, token_times
from capplan.loadtest.report.plots import step_axis
from capplan.loadtest.report.timeline import _time_weighted_mean
from capplan.loadtest.summary_model import RunSummary, StepSummary


def _frame(*spans: tuple[float, float]) -> pd.DataFrame:
    records = [
        RequestRecord(request_id=str(i), send=a, end=b, status=200)
        for i, (a, b) in enumerate(spans)
    ]
    return requests_frame(records)


def test_in_flight_is_averaged_over_time_per_bin() -> None:
    times, counts = in_flight(_frame((0.0, 1.0), (0.5, 1.5)))
    assert counts == [1, 2, 1, 0]
    means = _time_weighted_mean(
        np.array(times), np.array(counts, dtype=float), np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    )
    assert means.tolist() == pytest.approx([1.0, 2.0, 1.0, 0.0])
    # A bin half covered by one request averages to a half, not to 0 or 1.
    half = _time_weighted_mean(
        np.array(times), np.array(counts, dtype=float), np.array([0.0, 1.0, 2.0])
    )
    assert half.tolist() == pytest.approx([1.5, 0.5])


def test_back_to_back_requests_do_not_dip_at_the_handover() -> None:
    _, counts = in_flight(_frame((0.0, 1.0), (1.0, 2.0)))
    assert max(counts) == 1  # the end is counted before the send at the same instant


def test_token_times_use_chunk_token_counts_or_spread_the_total() -> None:
    records = [
        RequestRecord(request_id="a", chunk_times=[1.0, 2.0], chunk_tokens=[3, 1], output_tokens=4),
        RequestRecord(request_id="b", chunk_times=[1.5, 2.5], output_tokens=6),
    ]
    times, weights = token_times(requests_frame(records))
    assert sorted(zip(times, weights, strict=True)) == [(1.0, 3), (1.5, 3), (2.0, 1), (2.5, 3)]


def _telemetry() -> pd.DataFrame:
    t = np.arange(0.0, 10.5, 0.5)
    return pd.DataFrame({"t": t, "gpu0_energy_j": 100.0 * t, "gpu1_energy_j": 50.0 * t})


def test_energy_is_summed_over_gpus_and_interpolated_at_the_window_ends() -> None:
    assert energy_between(_telemetry(), 2.25, 4.25) == pytest.approx(300.0)
    assert joules_per_token(_telemetry(), 2.0, 4.0, output_tokens=30) == pytest.approx(10.0)


def test_energy_outside_the_sampled_span_is_unknown() -> None:
    assert energy_between(_telemetry(), -5.0, 4.0) is None
    assert energy_between(pd.DataFrame({"t": [0.0, 1.0]}), 0.0, 1.0) is None
    assert joules_per_token(_telemetry(), 1.0, 2.0, output_tokens=0) is None


def test_ladder_axis_from_step_labels() -> None:
    assert step_axis(_steps("concurrency=1", "concurrency=16")) == ("concurrency", [1.0, 16.0])
    assert step_axis(_steps("rate=0.5", "rate=2")) == ("rate", [0.5, 2.0])
    assert step_axis(_steps("ramp=1-10")) is None
    assert step_axis(_steps("concurrency=1", "rate=2")) is None


def _steps(*labels: str) -> tuple[StepSummary, ...]:
    """Steps of an old summary.json (no numeric load): the model reads it from the labels."""
    return RunSummary.from_dict({"steps": [{"step": label} for label in labels]}).steps
