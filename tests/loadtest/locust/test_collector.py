"""The master's record collector: once per request id, moved onto the master's clock.

The collector lives on the gevent side, so it is exercised in a child process (importing
Locust here would monkey-patch the test process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from types import SimpleNamespace
from capplan.loadtest.clock import RunClock
from capplan.loadtest.locust.process import Collector
from capplan.loadtest.record import RecordWriter, RequestRecord

clock = RunClock()
with RecordWriter(sys.argv[1]) as writer:
    collector = Collector(writer, clock)
    # A worker whose clock runs 5 s ahead answers the job it was sent a moment ago.
    collector.job_sent_at["far"] = clock.now()
    collector.on_ready(None, SimpleNamespace(node_id="far", data={"now": clock.now() + 5.0}))
    collector.job_sent_at["near"] = clock.now()
    collector.on_ready(None, SimpleNamespace(node_id="near", data={"now": clock.now()}))
    def rec(rid, t):
        r = RequestRecord(request_id=rid, send=t, end=t + 1, first_token=t + 0.5,
                          chunk_times=[t + 0.5, t + 0.9], intended_start=t - 0.1)
        return r.__dict__
    far = [rec("a", 105.0), rec("b", 106.0)]
    collector.on_records(None, SimpleNamespace(node_id="far", data={"records": far}))
    collector.on_records(None, SimpleNamespace(node_id="far", data={"records": far[:1]}))
    near = [rec("c", 100.0)]
    collector.on_records(None, SimpleNamespace(node_id="near", data={"records": near}))
    collector.on_done(None, SimpleNamespace(node_id="far", data={"sent": 2, "client": {}}))
    collector.on_done(None, SimpleNamespace(node_id="near", data={"sent": 1}))
    print(json.dumps({"duplicates": collector.duplicates, "offsets": collector.offsets,
                      "done": collector.all_done(["far", "near"])}))
"""


def test_records_are_written_once_and_moved_onto_the_masters_clock(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["duplicates"] == 1 and result["done"] is True
    assert abs(result["offsets"]["far"] - 5.0) < 0.05
    assert result["offsets"]["near"] == 0.0  # same-host noise is not "corrected"

    records = {r["request_id"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert sorted(records) == ["a", "b", "c"]
    shift = result["offsets"]["far"]
    a = records["a"]
    assert abs(a["send"] - (105.0 - shift)) < 1e-9
    assert abs(a["first_token"] - a["send"] - 0.5) < 1e-9  # per-request figures unchanged
    assert abs(a["intended_start"] - (104.9 - shift)) < 1e-9
    assert [round(t - a["send"], 9) for t in a["chunk_times"]] == [0.5, 0.9]
    assert records["c"]["send"] == 100.0
