"""Requests/s ceiling of the Locust engine (1 and 2 worker processes) beside the httpx engine.

One emulated reference server on 127.0.0.1 (zero model time: TTFT 0, TPOT 0, so the client and
the HTTP path are what is measured) is driven by each engine in turn with the same closed-loop
scenario; rounds alternate the engines so drifts in machine load hit all of them alike. Each
engine runs as it would for a user (`run_load`, `run_locust`), so process start-up is outside
the measured window (throughput comes from the records' own send/end times).

Printed per engine: requests/s, client CPU per request (ms; the httpx loop thread, or every
Locust process), E2E p50, and the ratio of requests/s to the httpx engine's.

    .venv/bin/python benchmarks/locust_ceiling.py [--requests 2000] [--concurrency 32]
        [--rounds 2] [--no-stream] [--server-workers 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capplan.loadtest.httpx.run import run_load  # noqa: E402
from capplan.loadtest.launch import launched_server  # noqa: E402
from capplan.loadtest.locust.engine import LocustOptions, run_locust  # noqa: E402
from capplan.loadtest.scenario import LoadConfig, build_config  # noqa: E402

ENGINES = ("httpx", "locust-1-worker", "locust-2-workers", "locust-local")


def run_engine(engine: str, config: LoadConfig, out: Path) -> dict[str, Any]:
    if engine == "httpx":
        summary = run_load(config, out_dir=out, handle_signals=False).summary
        client_cpu_s = summary["client"]["loop_cpu_fraction"] * summary["throughput"]["window_s"]
    else:
        options = {
            "locust-local": LocustOptions(),
            "locust-1-worker": LocustOptions(workers=1),
            "locust-2-workers": LocustOptions(workers=2),
        }[engine]
        summary = run_locust(config, out_dir=out, options=options).summary
        step = summary["locust"]["steps"][0]
        window = summary["throughput"]["window_s"]
        client_cpu_s = sum(
            w["loop_cpu_fraction"] * window for w in step["client"]["workers"].values()
        )
    ok = summary["requests"]["ok"]
    return {
        "rps": summary["throughput"]["requests_per_s"],
        "cpu_ms_per_request": 1000.0 * client_cpu_s / ok if ok else float("nan"),
        "e2e_p50_ms": summary["e2e_ms"]["p50"],
        "ok": ok,
        "failed": summary["requests"]["failed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--server-workers", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    server_args = ["--backend", "emulated", "--ttft-ms", "0", "--tpot-ms", "0"]
    server_args += ["--max-concurrent", "1024", "--queue-size", "1024"]
    server_args += ["--max-tokens-cap", str(max(args.max_tokens, 16))]
    if args.server_workers > 1:
        server_args += ["--server", "gunicorn", "--workers", str(args.server_workers)]
    results: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    with (
        tempfile.TemporaryDirectory() as tmp,
        launched_server(server_args, log_path=Path(tmp) / "server.log") as url,
    ):
        config = build_config(
            {},
            dict(
                url=url,
                concurrency=str(args.concurrency),
                requests=args.requests,
                prompt_tokens=16,
                max_tokens=args.max_tokens,
                stream=not args.no_stream,
                timeout="60s",
            ),
        )
        for round_index in range(args.rounds):
            order = engines if round_index % 2 == 0 else list(reversed(engines))
            for engine in order:
                out = Path(tmp) / f"{engine}-{round_index}"
                result = run_engine(engine, config, out)
                results[engine].append(result)
                print(f"round {round_index} {engine:18s} {result}", flush=True)

    print()
    mode = "non-streamed" if args.no_stream else "streamed"
    print(
        f"closed loop, concurrency {args.concurrency}, {args.requests} {mode} requests of "
        f"{args.max_tokens} tokens, {args.rounds} rounds (median shown)"
    )
    base = (
        statistics.median(r["rps"] for r in results.get("httpx", []))
        if "httpx" in results
        else None
    )
    print(f"{'engine':18s} {'req/s':>8s} {'x httpx':>8s} {'CPU ms/req':>10s} {'E2E p50 ms':>10s}")
    for engine in engines:
        rows = results[engine]
        rps = statistics.median(r["rps"] for r in rows)
        cpu = statistics.median(r["cpu_ms_per_request"] for r in rows)
        e2e = statistics.median(r["e2e_p50_ms"] for r in rows)
        ratio = f"{rps / base:.2f}" if base else "-"
        failed = sum(r["failed"] for r in rows)
        note = f"  ({failed} failed)" if failed else ""
        print(f"{engine:18s} {rps:8.1f} {ratio:>8s} {cpu:10.2f} {e2e:10.1f}{note}")


if __name__ == "__main__":
    main()
