"""Locust master and workers: the records of every worker reach requests.jsonl exactly once."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from capplan.loadtest.child_process import free_port
from capplan.loadtest.locust.engine import LocustOptions, run_locust
from capplan.loadtest.record import read_records
from capplan.loadtest.scenario import build_config

pytestmark = pytest.mark.slow


def test_two_local_workers_merge_into_one_record_set_with_every_request_once(
    emulated_url: str, tmp_path: Path
) -> None:
    config = build_config(
        {},
        dict(url=emulated_url, concurrency="6", requests=60, prompt_tokens=16, max_tokens=6),
    )
    result = run_locust(config, out_dir=tmp_path, options=LocustOptions(workers=2), reports=False)

    on_disk = read_records(tmp_path / "requests.jsonl")
    ids = Counter(r.request_id for r in on_disk)
    assert sorted(ids) == sorted(f"s0-{i}" for i in range(60))
    assert set(ids.values()) == {1}
    by_worker = Counter(r.worker for r in on_disk)
    assert len(by_worker) == 2 and all(n == 30 for n in by_worker.values())
    assert all(r.ok for r in on_disk)
    step = result.summary["locust"]["steps"][0]
    assert step["workers"] == 2 and step["users"] == 6 and step["complete"]
    assert step["duplicates_dropped"] == 0
    assert result.summary["requests"]["total"] == 60
    assert result.summary["locust"]["runner"] == "distributed"


def test_a_worker_started_with_capplan_locust_worker_joins_the_run(
    emulated_url: str, tmp_path: Path
) -> None:
    port = free_port()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capplan.cli",
            "locust-worker",
            "--once",
            "--master",
            "127.0.0.1",
            "--master-port",
            str(port),
        ],
    )
    try:
        config = build_config(
            {},
            dict(url=emulated_url, rate="40", requests=20, prompt_tokens=8, max_tokens=4),
        )
        options = LocustOptions(
            workers=1, remote_workers=1, master_bind="127.0.0.1", master_port=port
        )
        result = run_locust(config, out_dir=tmp_path, options=options, reports=False)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    records = result.records
    assert sorted(r.request_id for r in records) == sorted(f"s0-{i}" for i in range(20))
    assert len({r.worker for r in records}) == 2
    assert result.summary["locust"]["remote_workers"] == 1
