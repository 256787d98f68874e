"""The engine as users run it (issue 10's must-show list): real server processes on 127.0.0.1,
a model with Qwen3's 151,936-token vocabulary, the pool sized by `capplan estimate --runtime
capplan --emit`.

Memory: the server's RSS grows by less than the workspace the estimate counts while 32 prompts of
1,000 tokens run, and its peak stays under the estimate's process peak. Gap: while 8 prompts of
1,000 tokens join, a running stream waits at most 3 x (one decode step + one prefill chunk), both
measured on the same server just before (the padded engine this one replaced stalled them for
the whole prefill of all eight: 6.3 s, findings in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from capplan.cli import app
from tests.reference_server.engine.conftest import ServerProcess, server_process

pytestmark = pytest.mark.slow

PROMPT_TOKENS, MAX_TOKENS = 1000, 32
# Two sentences of printable ASCII: the tiny tokenizer's one character is one token.
LONG_PROMPT = ("Plan the capacity for Tuesday's traffic at the edge. " * 40)[:PROMPT_TOKENS]


@pytest.fixture(scope="module")
def estimate(big_vocab_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`capplan estimate --runtime capplan` for this model on 1.6 GiB of RAM, with its
    settings emitted (`settings_file`): the pool the server allocates."""
    settings = tmp_path_factory.mktemp("settings") / "server.json"
    result = CliRunner().invoke(
        app,
        ["estimate", "--gpu", "cpu", "--vram", "1.6GiB", "--model", str(big_vocab_model),
         "--runtime", "capplan", "--prompt-tokens", str(PROMPT_TOKENS),
         "--max-tokens", str(MAX_TOKENS), "--format", "json", "--emit", "json", str(settings)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {**json.loads(result.stdout), "settings_file": settings}


@pytest.fixture(scope="module")
def served(big_vocab_model: Path, estimate: dict[str, Any]) -> Iterator[ServerProcess]:
    """The server on the estimate's settings; timeouts and the token cap opened up for the
    tests' longer streams on a shared cpu."""
    with server_process(
        "--model", str(big_vocab_model), "--config", str(estimate["settings_file"]),
        "--request-timeout", "300", "--queue-timeout", "300", "--max-tokens-cap", "1000",
    ) as server:  # fmt: skip
        yield server


def test_the_kv_pool_the_server_allocates_is_the_estimates_term_to_the_byte(
    estimate: dict[str, Any], served: ServerProcess
) -> None:
    planned = estimate["capplan"]
    kv = served.stats()["kv_cache"]
    assert estimate["settings"]["kv_cache_memory"] == planned["pool_bytes"]
    assert kv["pool_bytes"] == planned["pool_bytes"]
    assert kv["num_blocks"] == planned["num_blocks"]
    assert estimate["memory"]["kv_budget_bytes"] == planned["pool_bytes"]


def test_32_prompts_of_1000_tokens_all_succeed_within_the_estimated_memory(
    estimate: dict[str, Any], served: ServerProcess
) -> None:
    planned = estimate["capplan"]
    served.reset_peak()
    ready = served.memory()["VmRSS"]  # weights and pool allocated, warmed up

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        body = {"prompt": LONG_PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.7}
        return await client.post(served.url + "/v1/completions", json=body)

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*(one(client) for _ in range(32)))

    answers = asyncio.run(all_at_once())
    assert [a.status_code for a in answers] == [200] * 32
    usage = [a.json()["usage"] for a in answers]
    assert all(u["prompt_tokens"] == PROMPT_TOKENS for u in usage)
    assert all(u["completion_tokens"] == MAX_TOKENS for u in usage)
    stats = served.stats()
    assert (
        stats["counters"]["ok"] >= 32
        and stats["backend"]["details"]["batch_stats"]["peak_batch"] > 1
    )
    peak = served.memory()["VmHWM"]
    # The pool was committed at start: what grows is the workspace the estimate counts.
    assert peak - ready <= planned["workspace"]["total_bytes"]
    assert peak <= planned["peak_bytes"]
    assert stats["kv_cache"]["used_blocks"] == 0  # every reservation given back


def test_a_running_stream_keeps_its_pace_while_eight_long_prompts_join(
    served: ServerProcess,
) -> None:
    url = served.url + "/v1/completions"

    async def first_token_s(client: httpx.AsyncClient, prompt_tokens: int) -> float:
        started = time.perf_counter()
        body = {"prompt": "x" * prompt_tokens, "max_tokens": 1}
        assert (await client.post(url, json=body)).status_code == 200
        return time.perf_counter() - started

    async def stream(client: httpx.AsyncClient, prompt: str, n: int, times: list[float]) -> None:
        body = {"prompt": prompt, "max_tokens": n, "stream": True}
        async with client.stream("POST", url, json=body) as answer:
            assert answer.status_code == 200
            async for line in answer.aiter_lines():
                if line.startswith("data: {"):
                    times.append(time.perf_counter())

    async def scenario() -> dict[str, float]:
        async with httpx.AsyncClient(timeout=300) as client:
            chunk = served.stats()["backend"]["details"]["prefill_chunk_tokens"]
            # One prefill chunk alone (its answer's whole round trip) on this server, now.
            chunk_s = min([await first_token_s(client, chunk) for _ in range(3)])
            running: list[list[float]] = [[] for _ in range(4)]
            streams = [
                asyncio.ensure_future(stream(client, "y" * 128, 300, times)) for times in running
            ]
            while min(len(times) for times in running) < 20:
                await asyncio.sleep(0.005)
            joined = time.perf_counter()
            joining: list[list[float]] = [[] for _ in range(8)]
            await asyncio.gather(*(stream(client, LONG_PROMPT, 8, times) for times in joining))
            prefilled = max(times[0] for times in joining)
            await asyncio.gather(*streams)
        before = [b - a for times in running for a, b in itertools.pairwise(times[:20])]
        during = [
            b - a
            for times in running
            for a, b in itertools.pairwise(times)
            if b > joined and a < prefilled
        ]
        return {
            "step_s": statistics.median(before),
            "chunk_s": chunk_s,
            "max_gap_s": max(during),
            "prefill_s": prefilled - joined,
        }

    figures = asyncio.run(scenario())
    bound = 3 * (figures["step_s"] + figures["chunk_s"])
    assert figures["max_gap_s"] <= bound, figures
    # The joiners' prompts took many gaps' worth of time: they were interleaved, not fast.
    assert figures["prefill_s"] >= 3 * figures["max_gap_s"], figures


def test_a_request_larger_than_the_pool_is_400_and_one_that_must_wait_is_queued(
    big_vocab_model: Path,
) -> None:
    # 150 blocks of 16 tokens (2,400 tokens; 512 bytes a token, one trash block): two requests
    # of 1,000 + 200 tokens fill it, a third waits, one of 2,000 + 500 could never run.
    pool = (150 + 1) * 16 * 512
    with server_process(
        "--model", str(big_vocab_model), "--kv-cache-memory", str(pool),
        "--max-concurrent", "8", "--queue-size", "8", "--queue-timeout", "300",
    ) as server:  # fmt: skip
        url = server.url + "/v1/completions"
        too_large = httpx.post(url, json={"prompt": "z" * 2000, "max_tokens": 500}, timeout=30)
        assert too_large.status_code == 400
        error = too_large.json()["error"]
        assert error["param"] == "max_tokens" and "KV cache" in error["message"]

        async def three() -> list[int]:
            async with httpx.AsyncClient(timeout=300) as client:
                body = {"prompt": LONG_PROMPT, "max_tokens": 200}
                requests = [asyncio.ensure_future(client.post(url, json=body)) for _ in range(3)]
                # Two hold the pool, the third waits in the admission queue, not failed.
                await asyncio.to_thread(
                    server.wait_stats,
                    lambda s: s["queued"] == 1 and s["kv_cache"]["reserved_blocks"] == 150,
                )
                return [(await r).status_code for r in requests]

        assert asyncio.run(three()) == [200, 200, 200]
        stats = server.stats()
        assert stats["counters"] == {"ok": 3, "kv_too_large": 1}
        assert stats["kv_cache"]["reserved_blocks"] == 0
