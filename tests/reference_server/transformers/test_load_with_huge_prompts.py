"""Load with huge prompts mixed in (issue 11): the embedded model in its own process, 200 requests
of which 8 are 3.9 MB chat bodies, while /health is probed from a thread of its own."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time

import httpx
import pytest

from tests.reference_server.processes import server_process

REQUESTS = 200
HUGE = 8
HEALTH_P99_S = 0.100  # the bound
HEALTH_MAX_S = 1.0


def _probe_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    """/health every 20 ms on its own kept-alive connection until `stop`."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            start = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            stop.wait(0.02)


@pytest.mark.slow
def test_health_stays_fast_and_small_requests_are_served_among_huge_prompts() -> None:
    huge = json.dumps(
        {"messages": [{"role": "user", "content": "x" * 3_900_000}], "max_tokens": 4}
    ).encode()
    small = [
        {"prompt": f"Request {i}: plan the capacity for Tuesday.", "max_tokens": 8}
        for i in range(REQUESTS - HUGE)
    ]
    # The huge ones spread through the run, one every 25 requests.
    order: list[bytes | dict[str, object]] = list(small)
    for i in range(HUGE):
        order.insert(i * (REQUESTS // HUGE), huge)
    args = ("--backend", "transformers", "--device", "cpu", "--max-concurrent", "8",
            "--queue-size", "256")  # fmt: skip
    with server_process(*args) as (_, url, _):
        stop, health = threading.Event(), []
        prober = threading.Thread(target=_probe_health, args=(url, stop, health))

        async def main() -> list[tuple[bool, int, float]]:
            gate = asyncio.Semaphore(16)  # 16 clients at a time
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:

                async def one(body: bytes | dict[str, object]) -> tuple[bool, int, float]:
                    async with gate:
                        start = time.perf_counter()
                        if isinstance(body, bytes):
                            answer = await client.post(
                                "/v1/chat/completions",
                                content=body,
                                headers={"content-type": "application/json"},
                            )
                        else:
                            answer = await client.post("/v1/completions", json=body)
                        seconds = time.perf_counter() - start
                        return isinstance(body, bytes), answer.status_code, seconds

                return await asyncio.gather(*[one(body) for body in order])

        prober.start()
        started = time.perf_counter()
        try:
            results = asyncio.run(main())
        finally:
            stop.set()
            prober.join(30)
        elapsed = time.perf_counter() - started
        counters = httpx.get(url + "/stats", timeout=10).json()["counters"]
    small_results = [(code, seconds) for was_huge, code, seconds in results if not was_huge]
    huge_codes = [code for was_huge, code, _ in results if was_huge]
    p99 = statistics.quantiles(health, n=100)[98]
    print(
        f"\n{REQUESTS} requests ({HUGE} huge) in {elapsed:.1f} s; /health over {len(health)} "
        f"probes: p50 {statistics.median(health) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(health) * 1000:.1f} ms; small requests p50 "
        f"{statistics.median(s for _, s in small_results) * 1000:.0f} ms"
    )
    assert [code for code, _ in small_results] == [200] * (REQUESTS - HUGE)
    assert huge_codes == [400] * HUGE  # over the prompt limit, refused before tokenizing
    assert counters == {"ok": REQUESTS - HUGE, "prompt_too_long": HUGE}
    assert len(health) >= 20, "too few probes for a p99"
    assert p99 < HEALTH_P99_S, sorted(health)[-10:]
    # A freeze shows in one probe only (it waits it out), so p99 alone would miss it: the
    # worst probe too, with a generous bound (20x the 30-56 ms measured here) for a busy machine.
    assert max(health) < HEALTH_MAX_S, sorted(health)[-10:]
