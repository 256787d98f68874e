from __future__ import annotations

import statistics

import pytest

from capplan.loadtest.arrival import schedule


def test_constant_arrivals_are_evenly_spaced_from_zero() -> None:
    offsets = schedule(rate=4.0, arrival="constant", requests=5)
    assert offsets == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_poisson_has_the_asked_mean_rate_and_is_reproducible() -> None:
    offsets = schedule(rate=10.0, arrival="poisson", requests=5000, seed=3)
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.05)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.08)
    assert offsets == schedule(rate=10.0, arrival="poisson", requests=5000, seed=3)
    assert offsets != schedule(rate=10.0, arrival="poisson", requests=5000, seed=4)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_sets_the_gap_variation_not_the_rate(burstiness: float) -> None:
    offsets = schedule(rate=5.0, arrival="gamma", burstiness=burstiness, requests=8000, seed=1)
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.2, rel=0.06)
    cv = statistics.stdev(gaps) / statistics.mean(gaps)
    assert cv == pytest.approx(burstiness**-0.5, rel=0.1)


def test_duration_bounds_the_schedule() -> None:
    offsets = schedule(rate=100.0, arrival="constant", duration_s=2.0)
    assert len(offsets) == 200 and max(offsets) < 2.0


def test_requests_and_duration_stop_at_whichever_comes_first() -> None:
    assert len(schedule(rate=100.0, arrival="constant", duration_s=2.0, requests=7)) == 7


def test_ramp_rate_climbs_linearly() -> None:
    offsets = schedule(rate=0.0, ramp_to=40.0, arrival="constant", duration_s=10.0)
    # Integral of a 0 -> 40 req/s ramp over 10 s is 200 arrivals; the second half holds 3/4.
    assert len(offsets) == pytest.approx(200, abs=1)
    assert sum(1 for t in offsets if t >= 5.0) == pytest.approx(150, abs=1)
