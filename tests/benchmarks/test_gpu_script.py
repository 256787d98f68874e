"""The GPU run's script works before a GPU is lent: the same steps on this CPU, tiny shapes
(the GPU run has one try)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_script_runs_every_check_on_a_cpu_and_keeps_its_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "GPU_SMOKE": "cpu",
        "SKIP_LOOP": "1",
        "OUT": str(out),
        "PY": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    default = json.loads((out / "generate_default.json").read_text())
    assert [row["batch"] for row in default["rows"]] == [1, 4]
    for row in default["rows"]:
        assert "error" not in row and row["decode_ms_per_step"] > 0
        assert row["estimate"]["allocated_peak_bytes"] > 0
    expandable = json.loads((out / "generate_expandable.json").read_text())
    assert expandable["alloc_conf"] == "expandable_segments:True"
    # 2. engine_check.py: every engine measured, the pool sized as estimated.
    result = json.loads((out / "engine.json").read_text())
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
    assert "ended with" not in (out / "run.log").read_text()  # no step failed
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
