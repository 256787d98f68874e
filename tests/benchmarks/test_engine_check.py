"""benchmarks/gpu/engine_check.py runs end to end on a cpu (the GPU run has one try)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_engine_check_measures_every_engine_and_sizes_the_pool_as_estimated(
    tmp_path: Path,
) -> None:
    out = tmp_path / "engine.json"
    args = ["--model", "embedded", "--gpu", "cpu", "--vram", "1.5GiB", "--batches", "1,2",
            "--prompt", "24", "--new", "6", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu/engine_check.py", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["engine"], r["batch"]): r for r in result["rows"]}
    engines = ("generate()", "engine", "transformers-cb")
    assert set(rows) == {(engine, batch) for engine in engines for batch in (1, 2)}, result
    assert all(r["tokens_per_s"] > 0 and r["ms_per_step"] > 0 for r in rows.values())
    assert result["engine"]["pool_bytes"] == result["estimate"]["pool_bytes"]
    assert result["estimate"]["max_batch"] == 2
    assert result["memory"]["nvml_peak"] is None  # no NVML on a cpu
    assert set(result["verdict"]["engine_over_generate"]) == {"1", "2"}
    assert set(result["verdict"]["transformers_cb_over_engine"]) == {"1", "2"}
    assert result["alloc_conf"] == os.environ.get(
        "PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"
    )
