"""Records and telemetry as pandas frames, from which the plots and requests.parquet are cut."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from capplan.loadtest.metrics import request_metrics
from capplan.loadtest.record import RequestRecord

_RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))
DERIVED = ("ttft_ms", "tpot_ms", "e2e_ms", "latency_ms", "generator_lag_ms")


def requests_frame(records: Sequence[RequestRecord]) -> pd.DataFrame:
    """One row per request: every record field, `ok`, and the per-request metrics.

    `itl_ms` holds each request's chunk gaps as a list (a list column in parquet).
    """
    rows: list[dict[str, Any]] = []
    for record in records:
        # Shallow on purpose: asdict() deep-copies every chunk_times list, 10x slower here.
        row = {name: getattr(record, name) for name in _RECORD_FIELDS}
        row["ok"] = record.ok
        m = request_metrics(record)
        for name in DERIVED:
            row[name] = getattr(m, name)
        row["itl_ms"] = list(m.itl_ms)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=[*_RECORD_FIELDS, "ok", *DERIVED])
    for name in DERIVED:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def read_telemetry(path: Path) -> pd.DataFrame:
    """telemetry.csv as a frame (empty when missing or header-only); a torn last row is dropped."""
    if not path.exists():
        return pd.DataFrame()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return pd.DataFrame()
        rows = [row for row in reader if len(row) == len(header)]
    frame = pd.DataFrame(rows, columns=header)
    for column in frame.columns:
        converted = pd.to_numeric(frame[column].replace("", math.nan), errors="coerce")
        if converted.notna().sum() > 0 or (frame[column] == "").all():
            frame[column] = converted
    return frame


def read_telemetry_meta(path: Path) -> dict[str, Any]:
    """The sampler's sidecar (telemetry.json): sources and GPUs; empty when absent."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_start(requests: pd.DataFrame, telemetry: pd.DataFrame) -> float | None:
    """The earliest moment on the run's clock: the time axis of every plot starts here."""
    candidates: list[float] = []
    if not requests.empty:
        starts = requests["send"]
        if "intended_start" in requests:
            starts = requests["intended_start"].fillna(requests["send"])
        candidates.append(float(starts.min()))
    if not telemetry.empty and "t" in telemetry:
        candidates.append(float(telemetry["t"].min()))
    return min(candidates) if candidates else None


def in_flight(requests: pd.DataFrame) -> tuple[list[float], list[int]]:
    """Requests on the wire over time (sent, not yet ended), as step-plot points."""
    if requests.empty:
        return [], []
    events = [(float(t), 1) for t in requests["send"]] + [(float(t), -1) for t in requests["end"]]
    events.sort(key=lambda e: (e[0], e[1]))  # at a tie, an end frees its slot before a send
    times: list[float] = []
    counts: list[int] = []
    level = 0
    for t, change in events:
        level += change
        times.append(t)
        counts.append(level)
    return times, counts


def token_times(requests: pd.DataFrame) -> tuple[list[float], list[float]]:
    """When output tokens arrived (one entry per content chunk) and how many each chunk held."""
    times: list[float] = []
    weights: list[float] = []
    for chunk_times, chunk_tokens, output in zip(
        requests.get("chunk_times", []),
        requests.get("chunk_tokens", []),
        requests.get("output_tokens", []),
        strict=False,
    ):
        if not isinstance(chunk_times, list) or not chunk_times:
            continue
        if isinstance(chunk_tokens, list) and len(chunk_tokens) == len(chunk_times):
            w = [float(n) for n in chunk_tokens]
        else:
            # Token counts per chunk unknown: spread the request's total evenly over its chunks.
            w = [float(output or 0) / len(chunk_times)] * len(chunk_times)
        times.extend(float(t) for t in chunk_times)
        weights.extend(w)
    return times, weights
