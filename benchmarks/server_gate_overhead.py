"""Latency the admission path adds: the same app with and without gate, queue and rate limit.

Two server processes on 127.0.0.1 (emulated backend, zero model time, so only the HTTP and
admission code is measured) are driven in alternating rounds by one async client; the figures
printed are p50/p99 per mode and the difference, measured side by side in one run.

    .venv/bin/python benchmarks/server_gate_overhead.py [--requests 2000] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MODES = ("open", "gated")


def serve(mode: str) -> None:
    """Child process: run one server and print its URL."""
    sys.path.insert(0, str(REPO))
    import uvicorn

    from capplan.settings import ServerSettings
    from reference_server.app import create_app
    from reference_server.emulated import EmulatedBackend, EmulatedTiming
    from reference_server.testing import bind_socket

    # The gate never blocks here (64 slots): what is measured is the cost of passing it.
    config = ServerSettings(
        backend="emulated", max_concurrent=64, queue_size=64, rate_limit="100000000/minute"
    )
    backend = EmulatedBackend(EmulatedTiming(ttft_ms=0, tpot_ms=0))
    app = create_app(config, backend, admission=(mode == "gated"))
    sock = bind_socket("127.0.0.1", 0)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


async def _batch(url: str, n: int, concurrency: int, stream: bool) -> list[float]:
    latencies: list[float] = []
    body = {"prompt": "overhead", "max_tokens": 8, "stream": stream}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            start = time.perf_counter()
            if stream:
                async with client.stream("POST", url + "/v1/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
            else:
                r = await client.post(url + "/v1/completions", json=body)
            assert r.status_code == 200, r.status_code
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
    return latencies


async def _admission_cost_us(n: int) -> tuple[float, float]:
    """In-process cost per request of the gate (acquire + release) and of the rate limiter
    (test + hit on two windows): the part of the HTTP difference that is the gate itself."""
    sys.path.insert(0, str(REPO))
    from reference_server.admission import AdmissionGate
    from reference_server.rate_limit import RateLimiter

    gate = AdmissionGate(64, 64, 30.0)
    start = time.perf_counter()
    for _ in range(n):
        await gate.acquire()
        gate.release(held_s=0.01)
    gate_us = (time.perf_counter() - start) / n * 1e6
    limiter = RateLimiter("100000000/minute;100000000/hour")
    start = time.perf_counter()
    for i in range(n):
        await limiter.hit(f"ip:10.0.0.{i % 16}")
    return gate_us, (time.perf_counter() - start) / n * 1e6


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=2000, help="per mode and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    gate_us, limiter_us = asyncio.run(_admission_cost_us(20_000))
    print(f"in-process cost per request: gate {gate_us:.1f} us, rate limiter {limiter_us:.1f} us")
    processes = {
        mode: subprocess.Popen(
            [sys.executable, __file__, "--serve", mode], stdout=subprocess.PIPE, text=True
        )
        for mode in MODES
    }
    try:
        urls = {}
        for mode, process in processes.items():
            assert process.stdout is not None
            urls[mode] = process.stdout.readline().strip()
        for url in urls.values():
            for _ in range(100):
                try:
                    httpx.get(url + "/ready", timeout=2).raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
        print("mode   stream conc   n     p50 ms   p99 ms")
        for stream in (False, True):
            for concurrency in args.concurrency:
                lat: dict[str, list[float]] = {m: [] for m in MODES}
                for mode in MODES:  # warm-up, not recorded
                    asyncio.run(_batch(urls[mode], 50, concurrency, stream))
                per_round = max(1, args.requests // args.rounds)
                for round_ in range(args.rounds):
                    # ABBA order: neither mode always runs right after the other.
                    for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                        lat[mode] += asyncio.run(_batch(urls[mode], per_round, concurrency, stream))
                for mode in MODES:
                    print(
                        f"{mode:<6} {stream!s:<6} {concurrency:<5} {len(lat[mode]):<5} "
                        f"{_pct(lat[mode], 50):8.2f} {_pct(lat[mode], 99):8.2f}"
                    )
                added50 = _pct(lat["gated"], 50) - _pct(lat["open"], 50)
                added99 = _pct(lat["gated"], 99) - _pct(lat["open"], 99)
                ratio = _pct(lat["gated"], 99) / _pct(lat["open"], 99)
                print(
                    f"  gate adds p50 {added50:+.2f} ms, p99 {added99:+.2f} ms "
                    f"(p99 ratio gated/open {ratio:.2f})"
                )
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
