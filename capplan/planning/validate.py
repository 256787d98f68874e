"""The estimator against a measurement of the same GPU, model and workload, figure by figure.

The estimate side follows the emulated backend's schedule exactly (prefill per prompt token plus
one decode step for the batch's KV, then one step per token), so against the emulated backend
the two must agree within the client's own overhead; on a real GPU the error column is the
estimator's error.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from capplan.errors import InputError, TargetError
from capplan.estimate.roofline import first_token_ms
from capplan.loadtest.summary_model import RunConfig, RunSummary
from capplan.loadtest.verdict import target_failure
from capplan.planning.sweep import read_sweep
from capplan.regression.metrics import flatten
from capplan.regression.runs import load_run

_MIB = 1024 * 1024


@dataclass(frozen=True)
class WorkloadShape:
    prompt_tokens: int
    output_tokens: int
    concurrency: int


# HTTP, tokenization and the client's event loop add a few ms the estimate does not model:
# 5-10 ms on TTFT measured against the emulated backend on a loaded 2-core machine (docs/ci.md).
LATENCY_SLACK_MS = 20.0


@dataclass(frozen=True)
class ValidationRow:
    name: str
    estimate: float | None
    measured: float | None
    note: str = ""
    slack: float = 0.0  # absolute difference that agrees whatever the %

    def agrees(self, tolerance_pct: float) -> bool | None:
        """None when a side is missing."""
        err = self.error_pct
        if err is None or self.estimate is None or self.measured is None:
            return None
        return abs(err) <= tolerance_pct or abs(self.estimate - self.measured) <= self.slack

    @property
    def error_pct(self) -> float | None:
        """(estimate - measured) / measured, in %: positive when the estimate is high."""
        if self.estimate is None or self.measured is None or self.measured == 0:
            return None
        return 100.0 * (self.estimate - self.measured) / abs(self.measured)


@dataclass(frozen=True)
class Validation:
    subject: str
    rows: tuple[ValidationRow, ...]
    tolerance_pct: float

    @property
    def agrees(self) -> bool:
        """Every figure with both sides is within the tolerance."""
        verdicts = [r.agrees(self.tolerance_pct) for r in self.rows]
        judged = [v for v in verdicts if v is not None]
        return bool(judged) and all(judged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "tolerance_pct": self.tolerance_pct,
            "agrees": self.agrees,
            "rows": [
                {
                    "name": r.name,
                    "estimate": r.estimate,
                    "measured": r.measured,
                    "error_pct": r.error_pct,
                    "agrees": r.agrees(self.tolerance_pct),
                    "note": r.note,
                }
                for r in self.rows
            ],
        }


def estimated_figures(
    timing: Any,
    shape: WorkloadShape,
    *,
    memory: Any | None = None,
    kv_ceiling: int | None = None,
) -> dict[str, float]:
    """Expected figures from service timing (the `ServiceTiming` contract or `EmulatedTiming`).

    `timing` needs `prefill_ms(tokens)`, `decode_step_ms(kv_tokens, batch)`, `kv_bytes_per_token`
    and `kv_budget_bytes` (and `overhead_ms` when calibrated). A closed loop keeps equal-length
    requests in lockstep: the k-th of c to arrive takes its first step beside k - 1 fresh
    prompts, so the median TTFT sees (c + 1) / 2 prompts' KV in a batch of (c + 1) / 2;
    decoding, the batch holds c requests half-way through their output. Each step takes the
    largest of memory, the batch's matmuls and the runtime's floor (as the emulated backend).
    `memory` is the estimator's `MemoryTerms` at this concurrency (`--concurrency c`) and
    `kv_ceiling` the concurrency past which it predicts out-of-memory: with them, the memory
    rows are the estimator's own terms rather than a second derivation.
    """
    p, o, c = shape.prompt_tokens, shape.output_tokens, shape.concurrency
    step = timing.decode_step_ms
    # Prefill is never faster than one decode step of the batch (one read of the weights, or
    # the runtime's floor); the request's own overhead (HTTP, tokenizing) comes before it.
    overhead = float(getattr(timing, "overhead_ms", 0.0))
    ttft = first_token_ms(
        overhead, timing.prefill_ms(p), step(int(p * (c + 1) / 2), max(1, (c + 1) // 2))
    )
    tpot = step(int(c * (p + o / 2)), c)
    e2e = ttft + (o - 1) * tpot
    figures = {
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "e2e_ms": e2e,
        "output_tokens_per_s": c * o / (e2e / 1000.0),
    }
    if memory is not None:
        figures["kv_peak_mib"] = c * memory.kv_per_request_bytes / _MIB
        if memory.concurrency == c and memory.peak_bytes:
            figures["peak_memory_mib"] = memory.peak_bytes / _MIB
    else:
        per_token = float(getattr(timing, "kv_bytes_per_token", 0) or 0)
        if per_token > 0:
            figures["kv_peak_mib"] = c * (p + o) * per_token / _MIB
    if kv_ceiling is not None:
        figures["safe_concurrency"] = float(kv_ceiling)
    else:
        per_token = float(getattr(timing, "kv_bytes_per_token", 0) or 0)
        budget = getattr(timing, "kv_budget_bytes", None)
        if per_token > 0 and budget:
            figures["safe_concurrency"] = float(math.floor(budget / (per_token * (p + o))))
    return figures


def check_same_workload(config: RunConfig, shape: WorkloadShape, run: Path) -> None:
    """A finished run of another shape would make every error column meaningless."""
    wanted = {
        "concurrency": [shape.concurrency],
        "prompt_tokens": shape.prompt_tokens,
        "max_tokens": shape.output_tokens,
    }
    ran = {
        "concurrency": list(config.concurrency),
        "prompt_tokens": config.token_count("prompt_tokens"),
        "max_tokens": config.token_count("max_tokens"),
    }
    differing = [f"{k} {ran[k]} (not {wanted[k]})" for k in wanted if ran[k] != wanted[k]]
    if config.rate:
        differing.append("an open loop (validate needs a closed loop)")
    if differing:
        raise InputError(
            f"'{run}' ran another workload: {', '.join(differing)}; pass --prompt-tokens, "
            "--max-tokens and --concurrency as it ran, or measure anew without --run"
        )


def check_target_answered(summary: RunSummary, run: Path) -> None:
    """TargetError (exit 3, as `capplan loadtest` would) when the run stopped early on a broken
    target or no request succeeded: its figures measure the failure, not the deployment."""
    if summary.stopped is None and summary.whole.requests.ok:
        return
    # The records only now: a long run's take seconds to read, and only a failure needs them.
    failure = target_failure(summary, load_run(run).records)
    if failure is None:  # only warmup requests succeeded: the measured ones still count none
        failure = "no measured request succeeded"
    raise TargetError(
        f"'{run}': {failure}; check that the workload fits (capplan estimate) and the server is up"
    )


def served_prompt_tokens(summary: RunSummary) -> int | None:
    """Prompt tokens per request as the server counted them (after any chat template), when it
    reported them for every successful request."""
    whole = summary.whole
    tokens, ok = whole.tokens, whole.requests.ok
    if not ok or tokens.prompt_total is None or set(tokens.prompt_source) != {"server"}:
        return None
    return round(tokens.prompt_total / ok)


def sweep_safe(sweep_dir: Path) -> float | None:
    """The last concurrency before the sweep's server started refusing (429/503).

    None when it never refused: the ceiling lies above the sweep, and its SLO-limited highest
    safe point says nothing about memory.
    """
    _, data = read_sweep(sweep_dir)
    if data.get("axis") != "concurrency":
        raise InputError("--sweep needs a concurrency sweep (capplan sweep --axis concurrency)")
    rejection = data.get("first_rejection")
    if rejection is None:
        return None
    below = [p["load"] for p in data["points"] if p["load"] < rejection]
    return float(max(below)) if below else 0.0


def measured_figures(
    summary: RunSummary,
    *,
    safe_concurrency: float | None = None,
    telemetry_csv: str | Path | None = None,
) -> dict[str, float]:
    """The same figures from a run: p50 TTFT and TPOT, mean E2E, output tokens/s, peaks."""
    flat = flatten(summary.whole)
    figures: dict[str, float] = {}
    for ours, theirs in (
        ("ttft_ms", "p50_ttft_ms"),
        ("tpot_ms", "p50_tpot_ms"),
        ("e2e_ms", "mean_e2e_ms"),
        ("output_tokens_per_s", "output_tokens_per_s"),
    ):
        if theirs in flat:
            figures[ours] = flat[theirs]
    if safe_concurrency is not None:
        figures["safe_concurrency"] = float(safe_concurrency)
    if telemetry_csv is not None and Path(telemetry_csv).is_file():
        figures.update(telemetry_peaks(telemetry_csv))
    return figures


def telemetry_peaks(path: str | Path) -> dict[str, float]:
    """Peak GPU memory (NVML, summed over GPUs; else the server's /stats) and KV use, in MiB."""
    gpu_cols = re.compile(r"^gpu\d+_mem_used_mib$")
    peak_gpu = peak_stats = peak_kv = None
    emulated = False
    with Path(path).open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            emulated = emulated or str(row.get("stats_emulated", "")).lower() in ("1", "true")
            gpus = [_num(v) for k, v in row.items() if k and gpu_cols.match(k)]
            gpu_sum = sum(v for v in gpus if v is not None) if any(gpus) else None
            peak_gpu = _max(peak_gpu, gpu_sum)
            peak_stats = _max(peak_stats, _num(row.get("stats_gpu_memory_used_mib")))
            peak_kv = _max(peak_kv, _num(row.get("stats_kv_cache_used_mib")))
    out: dict[str, float] = {}
    if emulated:
        # The emulated backend's "memory" is the KV it reserved, nothing else.
        kv = peak_kv if peak_kv is not None else peak_stats
        if kv is not None:
            out["kv_peak_mib"] = kv
        return out
    memory = peak_gpu if peak_gpu is not None else peak_stats
    if memory is not None:
        out["peak_memory_mib"] = memory
    if peak_kv is not None:
        out["kv_peak_mib"] = peak_kv
    return out


def _num(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _max(a: float | None, b: float | None) -> float | None:
    if b is None:
        return a
    return b if a is None else max(a, b)


# Absolute differences that agree whatever the %: client overhead on latency, and one request
# on a count (4 vs 5 is 20% yet the nearest a whole number can get).
_SLACK = {"ttft_ms": LATENCY_SLACK_MS, "e2e_ms": LATENCY_SLACK_MS, "safe_concurrency": 1.0}

_ROWS = (
    ("peak_memory_mib", "peak memory MiB", "estimator's device peak at this concurrency vs NVML"),
    ("kv_peak_mib", "KV cache peak MiB", "prompt + max_tokens per request"),
    (
        "safe_concurrency",
        "concurrency before OOM",
        "estimator's out-of-memory ceiling vs the sweep's last point before 503s",
    ),
    ("ttft_ms", "TTFT ms (p50)", ""),
    ("tpot_ms", "decode ms/token (p50 TPOT)", ""),
    ("e2e_ms", "E2E ms (mean)", ""),
    ("output_tokens_per_s", "output tokens/s", ""),
)

# What to calibrate when a row disagrees.
_FIX = {
    "ttft_ms": "calibrate prefill and request overhead (capplan calibrate)",
    "tpot_ms": "calibrate the decode step: floor, bandwidth, compute (capplan calibrate)",
    "e2e_ms": "calibrate the decode step and prefill (capplan calibrate)",
    "output_tokens_per_s": "calibrate the decode step (capplan calibrate)",
    "peak_memory_mib": "memory, not timing: check the CUDA context and the allocator "
    "(--alloc-conf), or report the run",
    "kv_peak_mib": "check the model's config (KV heads, head_dim) and --kv-dtype",
    "safe_concurrency": "memory, not timing: check --margin and the allocator (--alloc-conf)",
}


def _verdict(row: ValidationRow, key: str, tolerance_pct: float, detail: str) -> str:
    """The row's note: its verdict first, then what it compares (and, when off, what to fix)."""
    verdict = row.agrees(tolerance_pct)
    if verdict is None:
        missing = "not measured" if row.measured is None else "not estimated"
        text = missing
    elif verdict:
        err = row.error_pct or 0.0
        within = abs(err) <= tolerance_pct
        text = (
            f"agrees ({err:+.0f}%, within {tolerance_pct:g}%)"
            if within
            else f"agrees within {row.slack:g} of client overhead ({err:+.0f}%)"
        )
    else:
        text = f"off by {row.error_pct:+.0f}%: {_FIX[key]}"
    return f"{text}; {detail}" if detail else text


def validate(
    estimate: Mapping[str, float],
    measured: Mapping[str, float],
    *,
    subject: str,
    tolerance_pct: float = 10.0,
    notes: Mapping[str, str] | None = None,
) -> Validation:
    """Side by side; a figure missing on either side is shown with no error. Each row's note
    says its verdict first, and what to calibrate when it disagrees.

    `notes` adds to a row's note by figure key (e.g. the estimator's recommended concurrency).
    """
    rows = []
    for key, label, note in _ROWS:
        if key in estimate or key in measured:
            slack = _SLACK.get(key, 0.0)
            extra = (notes or {}).get(key)
            detail = f"{note}; {extra}" if extra and note else (extra or note)
            row = ValidationRow(label, estimate.get(key), measured.get(key), "", slack)
            rows.append(replace(row, note=_verdict(row, key, tolerance_pct, detail)))
    return Validation(subject, tuple(rows), tolerance_pct)
