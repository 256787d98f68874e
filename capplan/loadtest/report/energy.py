"""Energy per output token from the telemetry's per-GPU energy readings.

The sampler writes each GPU's energy since it started (`gpu<i>_energy_j`); the energy spent in a
time window is the interpolated difference at its ends, summed over GPUs. It covers the whole
GPU, not just this load: an idle GPU's draw counts too, as it does on the power bill.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_ENERGY = re.compile(r"^gpu\d+_energy_j$")


def energy_columns(telemetry: pd.DataFrame) -> list[str]:
    return [c for c in telemetry.columns if _ENERGY.match(c) and telemetry[c].notna().sum() >= 2]


def energy_between(telemetry: pd.DataFrame, start: float, end: float) -> float | None:
    """Joules all GPUs used between two RunClock times; None without readings covering both."""
    columns = energy_columns(telemetry)
    if not columns or end <= start:
        return None
    total = 0.0
    for column in columns:
        series = telemetry[["t", column]].dropna().sort_values("t")
        t = series["t"].to_numpy(dtype=float)
        joules = series[column].to_numpy(dtype=float)
        # Allow half a sample interval of slack at each end: the sampler ticks, requests don't.
        slack = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
        if start < t[0] - slack or end > t[-1] + slack:
            return None
        total += float(np.interp(end, t, joules) - np.interp(start, t, joules))
    return total


def joules_per_token(
    telemetry: pd.DataFrame, start: float, end: float, output_tokens: int
) -> float | None:
    if output_tokens <= 0:
        return None
    joules = energy_between(telemetry, start, end)
    return joules / output_tokens if joules is not None else None
