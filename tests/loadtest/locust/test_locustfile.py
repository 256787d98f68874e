"""scenarios/locustfile.py under plain `locust -f`, as a Locust user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capplan.loadtest.record import read_records

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


def test_plain_locust_with_two_processes_writes_one_record_per_request(
    emulated_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "locust", "-f", str(REPO / "scenarios" / "locustfile.py")]
    command += ["--host", emulated_url, "--headless", "-u", "4", "-r", "100", "-t", "2s"]
    command += ["--processes", "2", "--capplan-scenario", "ci-smoke", "--capplan-out", str(out)]
    command += ["--json"]  # Locust's final stats on stdout (the master's, and each worker's)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]

    records = read_records(out / "requests.jsonl")
    ids = [r.request_id for r in records]
    assert len(ids) == len(set(ids)) > 0
    assert {r.worker.rsplit("/", 1)[1] for r in records} == {"0", "1"}
    counted = max(_posts(doc) for doc in _json_documents(done.stdout))  # the master's totals
    assert counted == len(records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "locust"
    assert summary["requests"]["total"] == len(records)
    assert "closed loop" in summary["locust"]["steps"][0]["how"]
    assert summary["load_model_run"]["engine"] == "locust"
    assert summary["load_model_run"]["mode"] == "closed"


def _json_documents(text: str) -> list[list[dict[str, object]]]:
    decoder = json.JSONDecoder()
    docs, at = [], 0
    while (at := _skip_space(text, at)) < len(text):
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
    return docs


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _posts(doc: list[dict[str, object]]) -> int:
    return sum(int(str(row["num_requests"])) for row in doc if row.get("method") == "POST")
