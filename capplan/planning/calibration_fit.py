"""Fit the step model (floor, per-sequence host cost, bandwidth and compute efficiency, request
overhead) to measurements.

A decode step over b sequences takes max(floor + b x host per sequence, memory / bandwidth
efficiency, compute / compute efficiency); a request's first token takes the overhead plus one
prefill, max(floor + host, one read of the weights, compute). The fit searches a coarse grid of the
four step parameters for the smallest absolute log error over every point (robust to a point a
busy host slowed), refines it around the
best, and takes the overhead from the first-token points. It then says which parameters the
points constrained: a term that sets no point's time is only bounded by the measurements and
keeps the default where the default respects that bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from capplan.estimate.roofline import Roofline

_REFINE_ROUNDS = 3


@dataclass(frozen=True)
class DecodePoint:
    batch: float  # sequences decoding together
    kv_tokens: float  # KV tokens the batch holds, mid-generation
    step_ms: float  # measured: median time per output token


@dataclass(frozen=True)
class PrefillPoint:
    prompt_tokens: float
    ttft_ms: float  # measured at concurrency 1: overhead + prefill


@dataclass(frozen=True)
class Fit:
    floor_ms: float
    host_ms_per_sequence: float
    bandwidth_efficiency: float
    compute_efficiency: float
    overhead_ms: float
    measured: tuple[str, ...]
    rms_error: float  # relative (exp of the rms log error, minus 1)
    predicted_decode: tuple[float, ...]
    predicted_ttft: tuple[float, ...]


# Few points often fit several ways exactly (a floor, or memory at an absurdly low bandwidth):
# a light pull towards the default efficiencies picks the physically plausible one, and is far
# too light to outweigh a point's real error.
PRIOR_WEIGHT = 0.05


class _Terms:
    """Each point's memory and compute time at 100% efficiency, as arrays."""

    def __init__(self, roof: Roofline, decode: list[DecodePoint], prefill: list[PrefillPoint]):
        self.default_bw = roof.bandwidth_efficiency
        self.default_compute = roof.compute_efficiency
        # The estimator's own terms with the fitted parameters taken out, so that the fit and
        # the estimate it feeds can never price a step two ways (e.g. a quantized scheme's
        # decode and prefill slowdowns).
        unit = replace(
            roof,
            bandwidth_efficiency=1.0,
            compute_efficiency=1.0,
            floor_ms=0.0,
            host_ms_per_sequence=0.0,
            overhead_ms=0.0,
        )
        self.base = unit.decode_step_base_ms
        self.batch = np.array([p.batch for p in decode])
        self.mem = np.array([unit.decode_memory_ms(p.kv_tokens) for p in decode])
        self.comp = self.batch * unit.decode_compute_ms_per_sequence
        self.obs = np.log(np.array([p.step_ms for p in decode]))
        self.p_comp = np.array([unit.prefill_compute_ms(p.prompt_tokens) for p in prefill])
        self.p_obs = np.array([p.ttft_ms for p in prefill])

    def decode_pred(self, f: np.ndarray, h: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.maximum(np.maximum(f + h * self.batch, self.mem / b), self.comp / c)

    def prefill_pred(
        self, f: np.ndarray, h: np.ndarray, b: np.ndarray, c: np.ndarray
    ) -> np.ndarray:
        return np.maximum(np.maximum(f + h, self.base / b), self.p_comp / c)

    def loss(self, f: np.ndarray, h: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        # Absolute log errors: one point slowed by a busy host moves the fit far less than it
        # would under squares.
        total = np.abs(np.log(self.decode_pred(f, h, b, c)) - self.obs).sum(axis=-1)
        if self.p_obs.size:
            pred = self.prefill_pred(f, h, b, c)
            overhead = np.clip(np.median(self.p_obs - pred, axis=-1), 0.0, None)[..., None]
            total = total + np.abs(np.log(pred + overhead) - np.log(self.p_obs)).sum(axis=-1)
        prior = np.abs(np.log(b / self.default_bw)) + np.abs(np.log(c / self.default_compute))
        return total + PRIOR_WEIGHT * prior[..., 0]


def _search(terms: _Terms, grids: list[np.ndarray]) -> tuple[float, float, float, float]:
    """The grid point of least loss; grids are floor, host, bandwidth, compute."""
    f, h, b, c = (
        g.reshape([-1 if i == axis else 1 for i in range(4)] + [1]) for axis, g in enumerate(grids)
    )
    loss = terms.loss(f, h, b, c)
    index = np.unravel_index(int(np.argmin(loss)), loss.shape)
    return tuple(float(g[i]) for g, i in zip(grids, index, strict=True))  # type: ignore[return-value]


def _around(value: float, grid: np.ndarray) -> np.ndarray:
    """A finer grid around `value`, one coarse step either side (zero stays reachable)."""
    positive = grid[grid > 0]
    ratio = float(positive[1] / positive[0]) if positive.size > 1 else 2.0
    if value <= 0:
        return np.concatenate(([0.0], np.geomspace(positive[0] / ratio, positive[0], 5)))
    return np.geomspace(value / ratio, value * ratio, 9)


def fit(
    roof: Roofline,
    decode: list[DecodePoint],
    prefill: list[PrefillPoint],
    *,
    default_floor_ms: float,
    default_host_ms: float = 0.0,
) -> Fit:
    """Best step parameters for `roof` (its weights, KV and FLOPs per token; its efficiencies
    and floor are replaced) against the points."""
    if not decode:
        raise ValueError("no decode point to fit")
    terms = _Terms(roof, decode, prefill)
    smallest = float(min(p.step_ms for p in decode))
    largest = float(max([p.step_ms for p in decode] + [p.ttft_ms for p in prefill]))
    grids = [
        np.concatenate(([0.0], np.geomspace(smallest / 100, largest, 24))),
        np.concatenate(([0.0], np.geomspace(smallest / 2000, largest / 2, 20))),
        np.geomspace(0.02, 1.2, 16),
        np.geomspace(0.0005, 1.2, 20),
    ]
    best = _search(terms, grids)
    for _ in range(_REFINE_ROUNDS):
        grids = [_around(v, g) for v, g in zip(best, grids, strict=True)]
        best = _search(terms, grids)
    floor, host, bw, comp = best

    measured = []
    host_term = floor + host * terms.batch
    binding_host = host_term >= np.maximum(terms.mem / bw, terms.comp / comp)
    binding_mem = terms.mem / bw >= np.maximum(host_term, terms.comp / comp)
    binding_comp = terms.comp / comp >= np.maximum(host_term, terms.mem / bw)
    p_host = floor + host >= np.maximum(terms.base / bw, terms.p_comp / comp)
    p_mem = terms.base / bw >= np.maximum(floor + host, terms.p_comp / comp)
    p_comp = terms.p_comp / comp >= np.maximum(floor + host, terms.base / bw)
    if np.any(binding_host) or np.any(p_host):
        measured.append("floor")
        if host > 0 and np.any(binding_host & (terms.batch > 1)):
            measured.append("per-sequence")
    else:
        # Never the binding term: the data only says the floor lies below every point.
        floor = min(default_floor_ms, smallest)
        host = min(default_host_ms, host) if host > 0 else 0.0
    if np.any(binding_mem) or np.any(p_mem):
        measured.append("bandwidth")
    else:
        bw = max(bw, roof.bandwidth_efficiency)
    if np.any(binding_comp) or np.any(p_comp):
        measured.append("compute")
    else:
        comp = max(comp, roof.compute_efficiency)

    args = (np.array(floor), np.array(host), np.array(bw), np.array(comp))
    d_fit = terms.decode_pred(*args)
    overhead = 0.0
    p_fit = np.zeros(0)
    if prefill:
        p_pred = terms.prefill_pred(*args)
        overhead = max(0.0, float(np.median(terms.p_obs - p_pred)))
        p_fit = p_pred + overhead
        measured.append("overhead")
    errors = np.concatenate((np.log(d_fit) - terms.obs, np.log(p_fit) - np.log(terms.p_obs)))
    return Fit(
        floor_ms=floor,
        host_ms_per_sequence=host,
        bandwidth_efficiency=bw,
        compute_efficiency=comp,
        overhead_ms=overhead,
        measured=tuple(measured),
        rms_error=math.expm1(float(np.sqrt(np.mean(errors**2)))),
        predicted_decode=tuple(float(x) for x in d_fit),
        predicted_ttft=tuple(float(x) for x in p_fit),
    )
