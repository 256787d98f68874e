"""A synthetic run directory: records written with RecordWriter, telemetry as the sampler writes
it, summary.json from `summarize`. Timings are seeded and follow a closed-loop ladder."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from capplan.loadtest.record import RecordWriter, RequestRecord
from capplan.loadtest.summary import summarize

T0 = 1_700_000_000.0
POWER_W = 200.0
GPU_TOTAL_MIB = 10240.0


def _closed_loop_step(
    rng: random.Random, step_index: int, concurrency: int, start: float, per_step: int
) -> tuple[list[RequestRecord], float]:
    records: list[RequestRecord] = []
    free_at = [start] * concurrency
    for i in range(per_step):
        worker = min(range(concurrency), key=lambda w: free_at[w])
        send = free_at[worker]
        ttft = 0.020 + 0.004 * concurrency + rng.expovariate(1 / 0.004)
        tpot = 0.010 * (1 + concurrency / 16)
        tokens = rng.randint(20, 40)
        first = send + ttft
        chunks = [first + k * tpot for k in range(tokens)]
        failed = concurrency >= 16 and i % 10 == 9
        record = RequestRecord(
            request_id=f"s{step_index}-{i}",
            step=f"concurrency={concurrency}",
            send=send,
            first_byte=first - 0.001,
            first_token=None if failed else first,
            end=send + 0.002 if failed else chunks[-1] + 0.001,
            chunk_times=[] if failed else chunks,
            chunk_tokens=[] if failed else [1] * tokens,
            status=503 if failed else 200,
            error="http_503" if failed else None,
            prompt_tokens=128,
            output_tokens=0 if failed else tokens,
            prompt_tokens_source="server",
            output_tokens_source="server",
            finish_reason=None if failed else "length",
            warmup=i < concurrency,
        )
        records.append(record)
        free_at[worker] = record.end
    return records, max(free_at)


def _telemetry(path: Path, records: list[RequestRecord], end: float, gpus: int) -> None:
    """Rows as the sampler writes them; with 2 GPUs, a vLLM-style target with KV usage."""
    fields = ("mem_used_mib", "mem_total_mib", "util_pct", "power_w", "throttle", "energy_j")
    columns = ["t", "elapsed_s"]
    columns += [f"gpu{i}_{f}" for i in range(gpus) for f in (*fields, "energy_src")]
    columns += ["host_cpu_pct", "target_t", "metrics_running", "metrics_waiting"]
    columns += ["metrics_kv_cache_usage", "gpu_mem_used_mib", "gpu_mem_total_mib"]
    columns += ["gpu_util_pct", "gpu_mem_source"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        t = T0 - 0.5
        while t <= end + 0.5:
            running = sum(1 for r in records if r.send <= t < r.end)
            row: dict[str, object] = {"t": t, "elapsed_s": t - T0 + 0.5, "host_cpu_pct": 35.0}
            for i in range(gpus):
                row[f"gpu{i}_mem_used_mib"] = 4000.0 + (60.0 - 10 * i) * running
                row[f"gpu{i}_mem_total_mib"] = GPU_TOTAL_MIB
                row[f"gpu{i}_util_pct"] = min(100.0, (6.0 - i) * running)
                row[f"gpu{i}_power_w"] = POWER_W
                row[f"gpu{i}_throttle"] = "sw_power_cap" if running > 12 else ""
                row[f"gpu{i}_energy_j"] = POWER_W * (t - T0 + 0.5)
                row[f"gpu{i}_energy_src"] = "counter"
            row["target_t"] = t - 0.01
            row["metrics_running"] = running
            row["metrics_waiting"] = max(0, running - 8)
            if gpus > 1:
                row["metrics_kv_cache_usage"] = min(1.0, running / 16)
            used = [float(row[f"gpu{i}_mem_used_mib"]) for i in range(gpus)]  # type: ignore[arg-type]
            row["gpu_mem_used_mib"] = sum(used)
            row["gpu_mem_total_mib"] = GPU_TOTAL_MIB * gpus
            row["gpu_util_pct"] = sum(float(row[f"gpu{i}_util_pct"]) for i in range(gpus)) / gpus  # type: ignore[arg-type]
            row["gpu_mem_source"] = "nvml"
            writer.writerow(row)
            t += 0.5
    meta = {
        "interval_s": 0.5,
        "sources": {"nvml": "ok", "host": "ok", "target/metrics": "ok"},
        "gpus": [
            {"index": i, "name": "NVIDIA GeForce RTX 3080", "memory_total_mib": GPU_TOTAL_MIB}
            for i in range(gpus)
        ],
    }
    path.with_suffix(".json").write_text(json.dumps(meta))


def write_run(
    run_dir: Path,
    concurrencies: tuple[int, ...] = (1, 4, 16),
    per_step: int = 40,
    telemetry: bool = True,
    summary: bool = True,
    open_loop: bool = False,
    gpus: int = 1,
) -> tuple[Path, list[RequestRecord]]:
    rng = random.Random(7)
    records: list[RequestRecord] = []
    start = T0
    for index, concurrency in enumerate(concurrencies):
        step_records, start = _closed_loop_step(rng, index, concurrency, start, per_step)
        records += step_records
    if open_loop:  # relabel as rate steps whose sends ran 0..20 ms behind their schedule
        for i, record in enumerate(records):
            record.step = record.step.replace("concurrency=", "rate=")
            record.intended_start = record.send - (i % 5) * 0.005
    records.sort(key=lambda r: r.end)  # appended as they finish
    with RecordWriter(run_dir / "requests.jsonl") as writer:
        for record in records:
            writer.write(record)
    if telemetry:
        _telemetry(run_dir / "telemetry.csv", records, start, gpus)
    if summary:
        config: dict[str, Any] = {
            "name": "synthetic",
            "url": "http://127.0.0.1:8000",
            "endpoint": "completions",
            "stream": True,
            "load_model": "closed",
            "steps": [f"concurrency={c}" for c in concurrencies],
            "concurrency": list(concurrencies),
        }
        data = summarize(records, config, environment={"python": "3.11"}, run_id="run")
        (run_dir / "summary.json").write_text(json.dumps(data, indent=2))
    return run_dir, records


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., tuple[Path, list[RequestRecord]]]:
    def make(**kwargs: Any) -> tuple[Path, list[RequestRecord]]:
        return write_run(tmp_path / "run", **kwargs)

    return make


@pytest.fixture(scope="module")
def built_ladder(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[RequestRecord], list[Path]]:
    """One three-step ladder, reports built once, for the tests that only read them."""
    from capplan.loadtest.report.build import build_reports

    run_dir, records = write_run(tmp_path_factory.mktemp("ladder") / "run")
    return run_dir, records, build_reports(run_dir)
