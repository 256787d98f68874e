"""Real emulated reference servers on 127.0.0.1 for the regression tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.record import RequestRecord, write_records
from capplan.loadtest.run import RunResult, load_scenario
from capplan.loadtest.summary import summarize
from capplan.loadtest.summary_model import RunSummary
from capplan.regression.runs import LoadedRun
from capplan.settings import ServerSettings
from reference_server.app import create_app
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.testing import serve_in_thread


@contextmanager
def emulated_server(
    timing: EmulatedTiming, *, max_concurrent: int = 64, queue_size: int = 64
) -> Iterator[str]:
    config = ServerSettings(
        backend="emulated", max_concurrent=max_concurrent, queue_size=queue_size, vram_guard=None
    )
    with serve_in_thread(create_app(config, EmulatedBackend(timing))) as url:
        yield url


@pytest.fixture
def serve_emulated() -> Callable[..., AbstractContextManager[str]]:
    return emulated_server


def load_run_at(url: str, out_dir: Path, **overrides: Any) -> RunResult:
    """One closed-loop run against `url` with small defaults, overridable."""
    values: dict[str, Any] = {
        "url": url,
        "requests": 30,
        "concurrency": 2,
        "prompt_tokens": 16,
        "max_tokens": 8,
    }
    values.update(overrides)
    return run_load(load_scenario(None, values), out_dir=out_dir, reports=False)


def synthetic_run(
    seed: int,
    *,
    ttft_ms: float,
    tpot_ms: float,
    n: int = 80,
    fail: int = 0,
    steps: tuple[str, ...] = ("concurrency=4",),
) -> LoadedRun:
    """Records shaped like a streaming run, with lognormal noise on TTFT and TPOT; `n` per step."""
    rng = np.random.default_rng(seed)
    records = []
    t = 1000.0
    for step, i in ((step, i) for step in steps for i in range(n)):
        ttft = ttft_ms * rng.lognormal(0, 0.15) / 1000
        tpot = tpot_ms * rng.lognormal(0, 0.05) / 1000
        chunks = [t + ttft + k * tpot for k in range(16)]
        ok = i >= fail
        records.append(
            RequestRecord(
                f"{step}-r{i}",
                step=step,
                send=t,
                first_byte=t + ttft,
                first_token=chunks[0] if ok else None,
                end=chunks[-1] if ok else t + 0.001,
                chunk_times=chunks if ok else [],
                status=200 if ok else 503,
                error=None if ok else "http_error",
                output_tokens=16 if ok else 0,
                output_tokens_source="server",
            )
        )
        t += 0.05
    concurrency = [int(step.partition("=")[2]) for step in steps]
    summary = summarize(records, {"steps": list(steps), "concurrency": concurrency})
    return LoadedRun(Path(f"run-{seed}"), RunSummary.from_dict(summary), records)


def write_run(run: LoadedRun, out_dir: Path) -> Path:
    """A synthetic run on disk as the load tester lays it out."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(run.summary.to_dict()), encoding="utf-8")
    write_records(out_dir / "requests.jsonl", run.records)
    return out_dir
