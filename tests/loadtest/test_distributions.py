from __future__ import annotations

import random
import statistics

import pytest

from capplan.errors import InputError
from capplan.loadtest.distributions import parse_distribution


def test_fixed_values_from_numbers_and_text() -> None:
    assert parse_distribution(128, name="x").sample(random.Random(0)) == 128
    assert parse_distribution("64", name="x").sample(random.Random(0)) == 64


def test_uniform_stays_in_bounds_and_is_seeded() -> None:
    dist = parse_distribution({"dist": "uniform", "min": 10, "max": 20}, name="x")
    draws = [dist.sample(random.Random(i)) for i in range(200)]
    assert min(draws) >= 10 and max(draws) <= 20 and len(set(draws)) > 5
    assert dist.sample(random.Random(5)) == dist.sample(random.Random(5))


def test_lognormal_median_and_clamp() -> None:
    dist = parse_distribution("lognormal:200:0.5:16:1000", name="x")
    rng = random.Random(1)
    draws = [dist.sample(rng) for _ in range(4000)]
    assert 185 < statistics.median(draws) < 215
    assert min(draws) >= 16 and max(draws) <= 1000


def test_normal_and_choice_text_forms() -> None:
    normal = parse_distribution("normal:512:64", name="x")
    assert normal.kind == "normal" and normal.mean == 512 and normal.spread == 64
    choice = parse_distribution("choice:64,128", name="x")
    assert {choice.sample(random.Random(i)) for i in range(50)} == {64, 128}


@pytest.mark.parametrize("bad", ["0", "uniform:5", "uniform:9:3", {"dist": "zipf"}, True])
def test_bad_distributions_raise_input_error(bad: object) -> None:
    with pytest.raises(InputError):
        parse_distribution(bad, name="max_tokens")
