"""The server as users run it: a subprocess, SIGTERM drain, gunicorn workers."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx
import pytest

from capplan.loadtest.child_process import free_port
from tests.reference_server.processes import server_process

_server = server_process


async def _stream_all(url: str, n: int) -> list[tuple[int, int, bool]]:
    """n streamed completions; each gives (status, tokens received, saw [DONE])."""

    async def one(client: httpx.AsyncClient) -> tuple[int, int, bool]:
        tokens, done = 0, False
        body = {"prompt": "drain", "max_tokens": 30, "stream": True}
        async with client.stream("POST", url + "/v1/completions", json=body) as answer:
            async for line in answer.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data:"):
                    choices = json.loads(line[5:])["choices"]
                    tokens += sum(len(c["text"].split()) for c in choices)
        return answer.status_code, tokens, done

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*[one(client) for _ in range(n)])


@pytest.mark.slow
def test_sigterm_under_load_loses_no_in_flight_request() -> None:
    with _server("--ttft-ms", "50", "--tpot-ms", "30", "--max-concurrent", "4",
                 "--queue-size", "8", "--drain-timeout", "20") as (process, url, _):  # fmt: skip

        async def main() -> list[tuple[int, int, bool]]:
            load = asyncio.create_task(_stream_all(url, 8))  # 4 running + 4 queued
            async with httpx.AsyncClient(timeout=5) as client:
                while True:
                    stats = (await client.get(url + "/stats")).json()
                    if stats["running"] == 4 and stats["queued"] == 4:
                        break
                    await asyncio.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            return await load

        results = asyncio.run(main())
        assert results == [(200, 30, True)] * 8
        assert process.wait(20) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)


@pytest.mark.slow
def test_gunicorn_with_two_workers_serves() -> None:
    args = ("--server", "gunicorn", "--workers", "2", "--ttft-ms", "5", "--tpot-ms", "1",
            "--rate-limit", "1000/minute")  # fmt: skip
    with _server(*args) as (process, url, printed):
        assert re.search(r"max_concurrent\s+4\s+per worker", printed), printed
        assert re.search(r"rate_limit\s+1000/minute\s+per client, per worker \(memory://", printed)
        assert "/metrics sums every worker; /stats and /ready describe only the worker" in printed
        assert re.search(r"request_timeout_s\s+\S+\s+per request", printed), printed
        results = asyncio.run(_stream_all(url, 8))
        assert results == [(200, 30, True)] * 8
        answers = [
            httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=10)
            for _ in range(6)
        ]
        assert all(a.status_code == 200 for a in answers)
        metrics = httpx.get(url + "/metrics", timeout=10).text
        # Multiprocess metrics: every worker's requests counted, whichever worker answers.
        assert re.search(r"capplan:request_success_total\{[^}]*\} 14\.0", metrics), metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@contextmanager
def _redis() -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1; yields its URI."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import socket

        for _ in range(500):
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.01)  # polling for the port to open, not a guessed duration
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server not installed (apt-get install redis-server): the shared rate limit "
    "across gunicorn workers needs a real redis",
)
def test_redis_storage_shares_the_rate_limit_across_two_gunicorn_workers() -> None:
    pytest.importorskip("coredis", reason="limits[async-redis] (coredis) not installed")
    with _redis() as storage, _server(
        "--server", "gunicorn", "--workers", "2", "--ttft-ms", "1", "--tpot-ms", "1",
        "--rate-limit", "6/minute", "--rate-limit-storage", storage,
    ) as (process, url, printed):  # fmt: skip
        assert f"shared by all workers ({storage})" in printed
        # A new connection per request: gunicorn's workers take turns accepting them.
        codes = [
            httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code
            for _ in range(16)
        ]
        assert sorted(codes) == [200] * 6 + [429] * 10, codes
        # Both workers answered, so a per-worker (memory://) count would have let 12 through.
        answered_by: dict[int, int] = {}
        for _ in range(200):
            stats = httpx.get(url + "/stats").json()
            answered_by[stats["process"]["pid"]] = sum(stats["counters"].values())
            if len(answered_by) == 2:
                break
        assert len(answered_by) == 2 and all(answered_by.values()), answered_by
        assert sum(answered_by.values()) == 16
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
