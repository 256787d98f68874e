from __future__ import annotations

import numpy as np

from capplan.loadtest.record import RequestRecord
from capplan.regression.stats import (
    bootstrap_difference,
    mann_whitney_greater,
    per_request_values,
    proportion_greater,
)


def test_mann_whitney_matches_the_exact_textbook_statistic() -> None:
    # No overlap: every current value exceeds every baseline value, so U = n1 * n2.
    test = mann_whitney_greater([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0])
    assert test.u == 20.0
    assert test.effect == 1.0
    assert test.p_value < 0.01
    reverse = mann_whitney_greater([5.0, 6.0, 7.0, 8.0, 9.0], [1.0, 2.0, 3.0, 4.0])
    assert reverse.u == 0.0 and reverse.p_value > 0.99


def test_mann_whitney_handles_ties_without_claiming_a_shift() -> None:
    test = mann_whitney_greater([5.0] * 20, [5.0] * 20)
    assert test.p_value >= 0.5


def test_same_distribution_is_not_significant_and_a_doubling_is() -> None:
    rng = np.random.default_rng(1)
    base = rng.lognormal(mean=4.0, sigma=0.2, size=60)
    same = rng.lognormal(mean=4.0, sigma=0.2, size=60)
    doubled = 2.0 * rng.lognormal(mean=4.0, sigma=0.2, size=60)
    assert (
        bootstrap_difference(base, same, "p95").low
        < 0
        < bootstrap_difference(base, same, "p95").high
    )
    ci = bootstrap_difference(base, doubled, "p95")
    assert ci.low > 0 and ci.p_greater < 0.01
    assert mann_whitney_greater(base, doubled).p_value < 1e-6


def test_proportion_test_separates_noise_from_an_error_burst() -> None:
    assert proportion_greater(1, 100, 2, 100) > 0.2
    assert proportion_greater(0, 100, 20, 100) < 1e-4


def test_per_request_values_skip_warmup_and_failures() -> None:
    ok = RequestRecord(
        "a",
        send=0.0,
        first_token=0.1,
        end=0.5,
        status=200,
        output_tokens=5,
        chunk_times=[0.1, 0.2, 0.3, 0.4, 0.5],
    )
    warm = RequestRecord(
        "b", send=0.0, first_token=0.1, end=9.0, status=200, output_tokens=5, warmup=True
    )
    failed = RequestRecord("c", send=0.0, end=0.01, status=503, error="http_error")
    records = [ok, warm, failed]
    assert per_request_values(records, "e2e_ms").tolist() == [500.0]
    assert per_request_values(records, "tpot_ms").tolist() == [100.0]
    assert np.allclose(per_request_values(records, "itl_ms"), [100.0] * 4)
