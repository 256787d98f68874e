"""summary.json from request records alone, so every engine and `capplan report` agree.

One block per ladder step (in `steps`), each with its load as numbers (`load`, from the config).
A single-step run also carries its block at the top level; a ladder carries the whole run's
block under `overall`, so a top-level figure never mixes rungs by accident. Failed requests are
counted in every denominator and never dropped; warmup requests (flagged by the engine by event
time) are counted apart and excluded. This module writes the dict; readers use
`capplan.loadtest.summary_model.RunSummary`, whose `to_dict` gives back exactly this dict.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capplan import __version__
from capplan.devices import list_devices
from capplan.loadtest.metrics import RequestMetrics, request_metrics, stats
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.scenario import LoadConfig, LoadStep, Slo
from capplan.loadtest.server_message import server_message
from capplan.loadtest.summary_blocks import LoadModelRun
from capplan.loadtest.summary_model import SCHEMA_VERSION, RunConfig, load_to_dict
from capplan.loadtest.summary_run_blocks import Stopped
from capplan.loadtest.window_summary import (
    StepPlan,
    retries_block,
    retries_notes,
    window_block,
    window_notes,
)

# Open-loop generator lag above this at p99 means the client, not the server, set the pace.
MAX_GENERATOR_LAG_P99_MS = 10.0
MIN_MEASURED_REQUESTS = 10
# The first failure's detail per error class and status: why it failed, without the records.
MAX_ERROR_EXAMPLES = 8
ERROR_EXAMPLE_CHARS = 160


def summarize(
    records: Iterable[RequestRecord],
    config: LoadConfig | Mapping[str, Any] | None = None,
    *,
    selfcheck: Mapping[str, Mapping[str, Any]] | None = None,
    environment: Mapping[str, Any] | None = None,
    interrupted: bool = False,
    engine: str = "httpx",
    run_id: str | None = None,
    stopped: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The summary.json dict. `selfcheck` maps step label -> client self-check figures;
    `stopped` ({"step", "reason"}) says the engine stopped the run on a broken target."""
    records = list(records)
    config_dict = config.to_dict() if isinstance(config, LoadConfig) else dict(config or {})
    recorded = RunConfig(config_dict)
    slo = config.slo if isinstance(config, LoadConfig) else recorded.slo
    # Each step's numeric load, by label, from the ladder the config describes.
    loads = {s.label: s for s in recorded.load_steps}
    steps = []
    for label in _step_order(records, config_dict):
        step_records = [r for r in records if r.step == label]
        check = (selfcheck or {}).get(label)
        load, plan = loads.get(label), StepPlan.from_config(config_dict, label)
        steps.append(
            summarize_step(step_records, slo, label=label, selfcheck=check, load=load, plan=plan)
        )
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "engine": engine,
        "config": config_dict,
        "environment": dict(environment) if environment is not None else collect_environment(),
        "interrupted": interrupted,
    }
    if len(steps) == 1:
        summary.update({k: v for k, v in steps[0].items() if k != "step"})
        summary["step"] = steps[0]["step"]
        reasons = list(steps[0]["reasons"])
    else:
        summary["overall"] = overall = _overall(records, slo, steps)
        summary["requests"] = overall["requests"]
        reasons = list(overall["reasons"])
    summary["steps"] = steps
    if interrupted:
        reasons.append("interrupted before the planned end: figures cover what finished")
    stop = Stopped.from_dict(stopped)
    if stop is not None:
        summary["stopped"] = stop.to_dict()
        reasons.append(stop.line)
    summary["valid"] = not reasons
    summary["reasons"] = reasons
    return summary


def _overall(
    records: Sequence[RequestRecord], slo: Slo, steps: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A ladder's whole-run block: invalid when any step is, with that step's reasons."""
    overall = summarize_step(records, slo, label="overall")
    invalid = [s for s in steps if not s["valid"]]
    if invalid:
        overall["valid"] = False
        overall["reasons"] = [f"{s['step']}: {r}" for s in invalid for r in s["reasons"]]
    return overall


def load_model_run(engine: str, mode: str, how: str) -> dict[str, str]:
    """Which load model an engine really ran for a step; the same shape from every engine."""
    return LoadModelRun(engine, mode, how).to_dict()


def attach_load_model_runs(summary: dict[str, Any], runs: Mapping[str, Mapping[str, str]]) -> None:
    """Puts each step's `load_model_run` beside its figures (and at the top for one step)."""
    for block in summary["steps"]:
        if block["step"] in runs:
            block["load_model_run"] = dict(runs[block["step"]])
    if len(summary["steps"]) == 1 and "load_model_run" in summary["steps"][0]:
        summary["load_model_run"] = summary["steps"][0]["load_model_run"]


def apply_engine_block(summary: dict[str, Any], engine: str, block: Mapping[str, Any]) -> None:
    """Adds an engine's own block (e.g. `locust`) to a summary built from the records, with what
    it implies: each step's `load_model_run` (`steps[].mode/how`), and a step's `problem` as a
    reason the run is not valid.

    `capplan report --resummarize` calls it again with the block it found, so nothing is lost.
    """
    summary[engine] = dict(block)
    steps = [s for s in block.get("steps", []) if isinstance(s, dict) and "step" in s]
    attach_load_model_runs(
        summary,
        {
            s["step"]: load_model_run(engine, s["mode"], s["how"])
            for s in steps
            if "mode" in s and "how" in s
        },
    )
    for step in steps:
        if step.get("problem"):
            summary["valid"] = False
            summary["reasons"].append(f"{engine} {step['step']}: {step['problem']}")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write: a reader never sees half a summary (or config)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def summarize_step(
    records: Sequence[RequestRecord],
    slo: Slo,
    *,
    label: str,
    selfcheck: Mapping[str, Any] | None = None,
    load: LoadStep | None = None,
    plan: StepPlan | None = None,
) -> dict[str, Any]:
    """One step's block: its load, requests, latencies, throughput, goodput, validity; with the
    step's `plan` (from the run's config) also its window and refusals."""
    warmup = [r for r in records if r.warmup]
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    by_status: Counter[str] = Counter()
    by_error: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for r in measured:
        by_status[str(r.status) if r.status is not None else (r.error or "no_response")] += 1
        if not r.ok:
            kind = r.error or f"http_{r.status}"
            by_error[kind] += 1
            key = f"{kind} {r.status}" if r.status is not None else kind
            if key not in examples and len(examples) < MAX_ERROR_EXAMPLES:
                examples[key] = server_message(r.error_detail, chars=ERROR_EXAMPLE_CHARS, empty="")
    all_metrics = [request_metrics(r) for r in measured]
    metrics = [m for r, m in zip(measured, all_metrics, strict=True) if r.ok]
    window_s = _window_s(measured)
    output_tokens = sum(r.output_tokens for r in ok)
    good = [r for r, m in zip(ok, metrics, strict=True) if _meets(m, slo)]
    open_loop = any(r.intended_start is not None for r in measured)
    block: dict[str, Any] = {"step": label}
    if load is not None:
        block["load"] = load_to_dict(load)
    block |= {
        "requests": {
            "total": len(measured),
            "ok": len(ok),
            "failed": len(measured) - len(ok),
            "warmup_excluded": len(warmup),
            "by_status": dict(sorted(by_status.items())),
            "by_error": dict(sorted(by_error.items())),
            "error_examples": dict(sorted(examples.items())),
        },
        "error_rate": _ratio(len(measured) - len(ok), len(measured)),
        "ttft_ms": stats(m.ttft_ms for m in metrics if m.ttft_ms is not None),
        "tpot_ms": stats(m.tpot_ms for m in metrics if m.tpot_ms is not None),
        "itl_ms": stats(gap for m in metrics for gap in m.itl_ms),
        "e2e_ms": stats(m.e2e_ms for m in metrics),
    }
    if open_loop:
        block["latency_ms"] = stats(m.latency_ms for m in metrics if m.latency_ms is not None)
        block["generator_lag_ms"] = stats(
            m.generator_lag_ms for m in all_metrics if m.generator_lag_ms is not None
        )
    block["tokens"] = {
        "prompt_total": sum(r.prompt_tokens or 0 for r in ok),
        "output_total": output_tokens,
        "output_per_request": stats(float(r.output_tokens) for r in ok),
        "prompt_source": dict(Counter(r.prompt_tokens_source for r in ok)),
        "output_source": dict(Counter(r.output_tokens_source for r in ok)),
    }
    block["throughput"] = {
        "requests_per_s": _rate(len(ok), window_s),
        "output_tokens_per_s": _rate(output_tokens, window_s),
        "window_s": round(window_s, 3),
    }
    block["goodput"] = {
        "requests_per_s": _rate(len(good), window_s),
        "fraction": _ratio(len(good), len(measured)),
        "slo": {k: v for k, v in vars(slo).items() if v is not None},
    }
    if selfcheck is not None:
        block["client"] = dict(selfcheck)
    reasons, notes = _validity(block, selfcheck)
    if plan is not None:
        window, retries = window_block(records, plan), retries_block(records)
        block["window"], block["retries"] = window.to_dict(), retries.to_dict()
        notes += window_notes(window, plan) + retries_notes(retries, records, plan)
    block["valid"] = not reasons
    block["reasons"] = reasons
    block["notes"] = notes
    return block


def _validity(
    block: Mapping[str, Any], selfcheck: Mapping[str, Any] | None
) -> tuple[list[str], list[str]]:
    reasons: list[str] = []
    notes: list[str] = []
    requests = block["requests"]
    if requests["total"] == 0 and requests["warmup_excluded"]:
        reasons.append("every request fell in the warmup: shorten --warmup or send more")
    elif requests["total"] == 0:
        reasons.append("no request was measured")
    elif requests["ok"] == 0:
        reasons.append("no request succeeded: latency figures are empty")
    elif requests["total"] < MIN_MEASURED_REQUESTS:
        notes.append(f"only {requests['total']} requests measured: tail percentiles are rough")
    lag = block.get("generator_lag_ms", {}).get("p99")
    if lag is not None and lag > MAX_GENERATOR_LAG_P99_MS:
        reasons.append(
            f"client fell behind the arrival schedule (generator lag p99 {lag:.1f} ms > "
            f"{MAX_GENERATOR_LAG_P99_MS:g} ms): client-bound"
        )
    if selfcheck is not None:
        reasons.extend(str(r) for r in selfcheck.get("reasons", []))
    sources = block["tokens"]["output_source"]
    if len(sources) > 1:
        notes.append(f"output tokens counted from mixed sources: {sources}")
    elif "chunks" in sources:
        notes.append(
            "output tokens counted as chunks (the server sent no usage): a server sending several "
            "tokens per chunk is undercounted; give --tokenizer DIR to count the text"
        )
    return reasons, notes


def _meets(m: RequestMetrics, slo: Slo) -> bool:
    # A non-streamed answer shows its first token at the end: its TTFT, as the user feels it.
    ttft = m.ttft_ms if m.ttft_ms is not None else m.e2e_ms
    if slo.ttft_ms is not None and ttft > slo.ttft_ms:
        return False
    if slo.tpot_ms is not None and m.tpot_ms is not None and m.tpot_ms > slo.tpot_ms:
        return False
    return slo.e2e_ms is None or m.e2e_ms <= slo.e2e_ms


def _window_s(records: Sequence[RequestRecord]) -> float:
    """From the first intended (or actual) send to the last end among measured requests."""
    if not records:
        return 0.0
    start = min(r.intended_start if r.intended_start is not None else r.send for r in records)
    end = max(r.end for r in records)
    return max(0.0, end - start)


def _rate(count: float, window_s: float) -> float | None:
    return round(count / window_s, 4) if window_s > 0 else None


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _step_order(records: Sequence[RequestRecord], config: Mapping[str, Any]) -> list[str]:
    seen = list(dict.fromkeys(r.step for r in records))
    planned = [s for s in config.get("steps", []) if isinstance(s, str)]
    ordered = [s for s in planned if s in seen] + [s for s in seen if s not in planned]
    return ordered or (planned[:1] if planned else [""])


def collect_environment() -> dict[str, Any]:
    """capplan and Python versions, the host, and the GPUs NVML reports (none without NVML)."""
    env: dict[str, Any] = {
        "capplan": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "gpus": _nvml_gpus(),
    }
    try:
        import httpx

        env["httpx"] = httpx.__version__
    except ImportError:
        pass
    return env


def _nvml_gpus() -> list[dict[str, Any]]:
    devices, _ = list_devices()
    return [
        {"index": d.index, "name": d.name, "memory_total_bytes": d.memory_total_bytes}
        for d in devices
    ]
