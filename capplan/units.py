"""Quantities as users type them: sizes `24GiB`, bandwidths `936GB/s`, durations `2m`, `500ms`.

The one reader of a number with a unit, for the estimator's flags, scenario files and load-test
flags, and the latency limits of thresholds and compare.
"""

from __future__ import annotations

import re

from capplan.errors import InputError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_NUMBER = r"\s*([0-9]*\.?[0-9]+)\s*"


def parse_bytes(text: str, *, option: str = "--vram") -> int:
    """`24GiB` -> bytes. Decimal (GB) and binary (GiB) units; a bare number is bytes."""
    match = re.fullmatch(_NUMBER + r"([kmgt]i?b|b)?\s*", text.strip().lower())
    if not match:
        raise InputError(f"{option} '{text}' is not a size; write it like 24GiB or 24576MiB")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2) or ""])
    if size < 1024**2:
        raise InputError(f"{option} '{text}' is too small to hold a model; write it like 24GiB")
    return size


def parse_bandwidth(text: str, *, option: str = "--bandwidth") -> float:
    """`936GB/s` -> bytes per second. A bare number is GB/s."""
    match = re.fullmatch(_NUMBER + r"(?:([kmgt]i?b)\s*/\s*s)?\s*", text.strip().lower())
    if not match:
        raise InputError(f"{option} '{text}' is not a bandwidth; write it like 936GB/s")
    unit = match.group(2) or "gb"
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise InputError(f"{option} '{text}' must be positive; write it like 936GB/s")
    return value


def parse_tflops(text: str, *, option: str = "--tflops") -> float:
    """`71` or `71TFLOPS` -> TFLOPS."""
    match = re.fullmatch(_NUMBER + r"(?:tflops)?\s*", text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"{option} '{text}' is not a positive TFLOPS figure; write it like 71")
    return float(match.group(1))


DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(_NUMBER + r"(ms|s|m|h)?\s*")


def parse_seconds(value: object, name: str) -> float:
    """`60s`, `2m`, `500ms`, `1h` or a bare number (seconds) -> seconds, never negative."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if match is None:
            raise InputError(f"{name}: cannot read '{value}'; write e.g. 60s, 2m, 500ms")
        seconds = float(match[1]) * DURATION_UNITS_S[match[2] or "s"]
    if seconds < 0:
        raise InputError(f"{name} must not be negative")
    return seconds


def milliseconds(number: float, unit: str) -> float:
    """A latency written as NUMBER UNIT (`0.5` `s`) in ms; no unit means ms."""
    return number * DURATION_UNITS_S[unit] * 1000.0 if unit else number


def format_bytes(num_bytes: float) -> str:
    """Binary units, three significant figures: `8.79 GiB`, `144 MiB`, `144 KiB`."""
    sign = "-" if num_bytes < 0 else ""
    value = abs(float(num_bytes))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{value:.0f} B"
            return f"{sign}{value:.3g} {unit}" if value < 100 else f"{sign}{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_int_list(text: str, *, option: str) -> list[int]:
    """`1,4,16` -> [1, 4, 16]; every value a positive integer."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option}: expected whole numbers like 1,4,16, got '{text}'") from None
    if not values or min(values) < 1:
        raise InputError(f"{option}: give one or more numbers of at least 1, e.g. 1,4,16")
    return values
