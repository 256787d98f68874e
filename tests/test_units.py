from __future__ import annotations

from capplan.units import parse_seconds


def test_durations_read_units() -> None:
    assert parse_seconds("500ms", "d") == 0.5
    assert parse_seconds("2m", "d") == 120
    assert parse_seconds(3, "d") == 3
