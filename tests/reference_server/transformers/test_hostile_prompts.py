"""Hostile prompts against the embedded model over real HTTP on 127.0.0.1 (issue 11): huge bodies
(1), invalid text (4), a host out-of-memory in a forward pass (7), and the tokenizer lanes."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from capplan.settings import ServerSettings
from reference_server.app import create_app
from reference_server.testing import serve_in_thread
from reference_server.transformers_backend import TransformersBackend
from tests.reference_server.bad_text import check_refusals, send_all_on_one_connection
from tests.reference_server.raw_http import connect, exchange

HUGE_CHARS = 3_900_000  # the issue's 3.9 MB chat bodies, under the 4 MiB body limit
SMALL = {"prompt": "a", "max_tokens": 3}


def _huge_chat() -> bytes:
    return json.dumps(
        {"messages": [{"role": "user", "content": "x" * HUGE_CHARS}], "max_tokens": 4}
    ).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, TransformersBackend]]:
    backend = TransformersBackend(device="cpu", batch_wait_ms=2.0)
    with serve_in_thread(create_app(ServerSettings(), backend)) as url:
        yield url, backend


def _counters(url: str) -> dict[str, int]:
    return dict(httpx.get(url + "/stats", timeout=10).json()["counters"])


# --- 1. huge bodies ------------------------------------------------------------------------------


def test_huge_chat_bodies_meet_the_rate_limit_first_and_never_freeze_health() -> None:
    backend = TransformersBackend(device="cpu")
    app = create_app(ServerSettings(rate_limit="2/minute"), backend)
    body = _huge_chat()
    with serve_in_thread(app) as url:

        async def main() -> tuple[list[httpx.Response], list[float]]:
            async with httpx.AsyncClient(timeout=120) as client:
                posts = [
                    asyncio.create_task(
                        client.post(
                            url + "/v1/chat/completions",
                            content=body,
                            headers={"content-type": "application/json"},
                        )
                    )
                    for _ in range(8)
                ]
                health: list[float] = []
                while not all(post.done() for post in posts):
                    start = time.perf_counter()
                    assert (await client.get(url + "/health", timeout=60)).status_code == 200
                    health.append(time.perf_counter() - start)
                    await asyncio.sleep(0.01)
                return [post.result() for post in posts], health

        answers, health = asyncio.run(main())
        counters = _counters(url)
    codes = sorted(answer.status_code for answer in answers)
    # Two within the limit are refused for their length, before any tokenizer sees them; the
    # other six meet the rate limit first (before: all eight 400, after tokenizing each).
    assert codes == [400, 400] + [429] * 6, [a.text[:200] for a in answers]
    assert {a.json()["error"]["param"] for a in answers if a.status_code == 400} == {"messages"}
    assert counters == {"prompt_too_long": 2, "rate_limited": 6}
    # Generous for a loaded 2-core machine (the client shares this process and uploads 31 MB);
    # before, /health took 15 s behind the tokenizer.
    assert max(health) < 2.0, health


def test_long_prompts_tokenize_on_their_own_lane_while_short_ones_are_served() -> None:
    backend = TransformersBackend(device="cpu")
    # A limit high enough that 400,000-character prompts are tokenized (0.7 s each, here).
    app = create_app(ServerSettings(max_prompt_chars=1_000_000), backend)
    long_prompt = {"prompt": "y" * 400_000, "max_tokens": 1}
    codes: list[int] = []
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as client:

        def send_longs() -> None:
            async def longs() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=120) as aclient:
                    posts = [aclient.post("/v1/completions", json=long_prompt) for _ in range(4)]
                    return await asyncio.gather(*posts)

            codes.extend(answer.status_code for answer in asyncio.run(longs()))

        thread = threading.Thread(target=send_longs)
        thread.start()
        # While they tokenize (one at a time, about 3 s in all), a short prompt is answered:
        # it waits behind no lock and no long prompt.
        deadline = time.monotonic() + 60
        while client.get("/stats").json()["tokenizing"] == 0:
            assert time.monotonic() < deadline, "the long prompts never started tokenizing"
            time.sleep(0.01)  # polling an observable state
        short = client.post("/v1/completions", json={"prompt": "short", "max_tokens": 4})
        still_tokenizing = client.get("/stats").json()["tokenizing"]
        thread.join(120)
    assert short.status_code == 200
    assert still_tokenizing >= 1  # the short one finished first
    assert codes == [400] * 4  # 400,000 tokens cannot fit the 4,096-token context


def test_the_lock_free_tokenizer_gives_the_tokens_transformers_gives(
    server: tuple[str, TransformersBackend],
) -> None:
    _, backend = server
    tokenizer = backend._require_tokenizer()
    for text in ("hello <|im_start|> world", "héllo\tthere\n", "<|endoftext|>x", ""):
        assert backend.encode(text) == list(tokenizer.encode(text))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    expected = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert backend.encode_chat(messages) == list(expected)


# --- 4. invalid text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", b'{"prompt": "\\udc00"}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udc00"}]}'),
    ],
)
def test_a_lone_surrogate_is_a_counted_422_on_the_real_model(
    server: tuple[str, TransformersBackend], path: str, body: bytes
) -> None:
    url, _ = server
    before = _counters(url)
    sock = connect(url)
    assert exchange(sock, "POST", path, body).status == 422
    ok = b'{"prompt": "ok", "max_tokens": 2}'
    assert exchange(sock, "POST", "/v1/completions", ok).status == 200  # the same connection
    sock.close()
    after = _counters(url)
    assert after.get("invalid", 0) - before.get("invalid", 0) == 1
    assert "error" not in after


def test_invalid_text_in_every_string_field_is_refused_by_the_real_model(
    server: tuple[str, TransformersBackend],
) -> None:
    url, _ = server
    check_refusals(send_all_on_one_connection(url))
    assert "error" not in _counters(url)


# --- 7. host out of memory in a forward pass -----------------------------------------------------

CPU_ALLOCATION_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 30000000000 bytes. Error code 12 (Cannot allocate memory)"
)  # what torch 2.13 raises (a RuntimeError) when the host cannot give a tensor its memory


@pytest.mark.parametrize(
    "failure", [RuntimeError(CPU_ALLOCATION_FAILURE), MemoryError()], ids=["torch-cpu", "python"]
)
def test_host_out_of_memory_in_a_forward_pass_is_a_503_and_the_server_lives_on(
    server: tuple[str, TransformersBackend], failure: BaseException
) -> None:
    url, backend = server
    runner = backend.engine
    assert runner is not None
    engine = runner.engine  # the fixed-KV engine the runner's thread drives
    model = engine.model
    forward = model.forward
    failed: list[bool] = []

    def fails_once(*args: Any, **kwargs: Any) -> Any:  # the hardware boundary: the allocator
        if not failed:
            failed.append(True)
            raise failure
        return forward(*args, **kwargs)

    before = _counters(url)
    ooms_before = engine.counters.out_of_memory
    model.forward = fails_once
    try:
        answer = httpx.post(url + "/v1/completions", json=SMALL, timeout=30)
    finally:
        del model.forward
    assert answer.status_code == 503, answer.text
    assert "out of memory" in answer.json()["error"]["message"]
    assert int(answer.headers["retry-after"]) >= 1
    assert engine.counters.out_of_memory == ooms_before + 1  # the engine dropped its batch
    after = _counters(url)
    assert after["out_of_memory"] - before.get("out_of_memory", 0) == 1
    metrics = httpx.get(url + "/metrics", timeout=10).text
    assert re.search(r'request_rejections_total\{[^}]*reason="out_of_memory"\}', metrics)
    again = httpx.post(url + "/v1/completions", json=SMALL, timeout=30)
    assert again.status_code == 200
    assert httpx.get(url + "/stats", timeout=10).json()["running"] == 0
