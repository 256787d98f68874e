"""How long `capplan report` takes as runs grow, and what building the request table costs.

Writes synthetic runs (N streamed requests of C content chunks each, one telemetry row per
0.5 s) to a temporary directory and times `build_reports` on each. Side by side in the same run,
the request table is built both ways: field by field (what `requests_frame` does) and with
`dataclasses.asdict` (which deep-copies every `chunk_times` list).

    .venv/bin/python benchmarks/report_build.py [--requests 2000 20000] [--chunks 100]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capplan.loadtest.record import RecordWriter, RequestRecord, read_records  # noqa: E402
from capplan.loadtest.report.build import build_reports  # noqa: E402
from capplan.loadtest.report.frame import requests_frame  # noqa: E402
from capplan.loadtest.summary import summarize  # noqa: E402


def synthetic_run(run_dir: Path, n: int, chunks: int) -> list[RequestRecord]:
    rng = random.Random(1)
    t0 = time.time()
    records = []
    for i in range(n):
        send = t0 + i * 0.01
        first = send + 0.05 + rng.random() * 0.01
        times = [first + k * 0.01 for k in range(chunks)]
        records.append(
            RequestRecord(
                request_id=str(i), step="concurrency=64", send=send, first_token=first,
                end=times[-1], chunk_times=times, chunk_tokens=[1] * chunks, status=200,
                output_tokens=chunks, output_tokens_source="server",
            )
        )  # fmt: skip
    with RecordWriter(run_dir / "requests.jsonl") as writer:
        for record in records:
            writer.write(record)
    summary = summarize(records, {"steps": ["concurrency=64"]}, environment={})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    end = max(r.end for r in records)
    with (run_dir / "telemetry.csv").open("w") as f:
        f.write("t,gpu_mem_used_mib,gpu_mem_total_mib,gpu_util_pct,gpu_mem_source\n")
        t = t0
        while t < end:
            f.write(f"{t},{4000 + rng.random() * 100},10240,{rng.random() * 100},nvml\n")
            t += 0.5
    return records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--chunks", type=int, default=100)
    args = parser.parse_args()
    print("| requests x chunks | read s | table (fields) s | table (asdict) s | ratio | build s |")
    print("|---|---|---|---|---|---|")
    for n in args.requests:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp)
            synthetic_run(run_dir, n, args.chunks)
            t = time.perf_counter()
            records = read_records(run_dir / "requests.jsonl")
            read_s = time.perf_counter() - t
            t = time.perf_counter()
            requests_frame(records)
            fields_s = time.perf_counter() - t
            t = time.perf_counter()
            [asdict(r) for r in records]
            asdict_s = time.perf_counter() - t
            t = time.perf_counter()
            build_reports(run_dir)
            build_s = time.perf_counter() - t
        print(
            f"| {n:,} x {args.chunks} | {read_s:.2f} | {fields_s:.2f} | {asdict_s:.2f} "
            f"| {asdict_s / fields_s:.1f}x | {build_s:.2f} |"
        )


if __name__ == "__main__":
    main()
