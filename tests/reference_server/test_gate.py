"""The concurrency gate and its bounded queue, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from reference_server.backend import GenerationEvent, GenerationRequest
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from tests.reference_server.conftest import ServerFactory, completion


async def _send_all(url: str, n: int, release: Any) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        tasks = [
            asyncio.create_task(client.post(url + "/v1/completions", json=completion()))
            for _ in range(n)
        ]
        return await asyncio.gather(*tasks, release(tasks))


def test_gate_2_queue_3_under_20_requests_runs_2_queues_3_refuses_15(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(max_concurrent=2, queue_size=3, queue_timeout_s=30)
    server.backend.hold()
    seen: dict[str, Any] = {}

    async def release(tasks: list[asyncio.Task[httpx.Response]]) -> None:
        # Once 15 refusals are back, the gate must hold exactly 2 running and 3 queued.
        while sum(t.done() for t in tasks) < 15:
            await asyncio.sleep(0.01)
        stats = await asyncio.to_thread(server.wait_stats, lambda s: s["queued"] == 3)
        seen.update(stats)
        server.backend.release()

    *answers, _ = asyncio.run(_send_all(server.url, 20, release))
    assert seen["running"] == 2
    assert seen["queued"] == 3
    assert len(answers) == 20
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 5 + [503] * 15
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.json()["error"]["code"] == 503
        else:
            assert answer.json()["usage"]["completion_tokens"] == 4
    final = server.wait_stats(lambda s: s["running"] == 0 and s["queued"] == 0)
    assert final["counters"] == {"ok": 5, "queue_full": 15}


class _RecordingBackend(EmulatedBackend):
    """Records the order generations start in (the seed names the request)."""

    def __init__(self) -> None:
        super().__init__(EmulatedTiming(ttft_ms=0, tpot_ms=0))
        self.order: list[int | None] = []

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.order.append(request.seed)
        return super().generate(request)


def test_queued_requests_run_in_arrival_order(emulated_server: ServerFactory) -> None:
    backend = _RecordingBackend()
    server = emulated_server(max_concurrent=1, queue_size=5, backend=backend)
    backend.hold()

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(i: int) -> None:
                r = await client.post(server.url + "/v1/completions", json=completion(seed=i))
                assert r.status_code == 200

            tasks = []
            for i in range(4):
                tasks.append(asyncio.create_task(one(i)))
                # Each request is in the gate before the next one is sent.
                await asyncio.to_thread(
                    server.wait_stats, lambda s, i=i: s["running"] + s["queued"] == i + 1
                )
            server.backend.release()
            await asyncio.gather(*tasks)

    asyncio.run(main())
    assert backend.order == [0, 1, 2, 3]
