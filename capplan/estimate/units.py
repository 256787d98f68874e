"""Memory sizes and bandwidths as users type them: `24GiB`, `10240MiB`, `936GB/s`, `71`."""

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


def gib(num_bytes: float) -> float:
    return num_bytes / 1024**3


def mib(num_bytes: float) -> float:
    return num_bytes / 1024**2


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
