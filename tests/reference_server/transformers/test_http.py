"""The reference server on the embedded model, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from capplan.settings import ServerSettings
from reference_server.app import create_app
from reference_server.testing import serve_in_thread
from reference_server.transformers_backend import TransformersBackend

CHAT = [{"role": "user", "content": "Plan the capacity for Tuesday."}]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, TransformersBackend]]:
    backend = TransformersBackend(device="cpu", max_batch=8, batch_wait_ms=2.0)
    app = create_app(ServerSettings(max_tokens_cap=4000), backend)
    with serve_in_thread(app) as url:
        yield url, backend


@pytest.fixture
def base_url(server: tuple[str, TransformersBackend]) -> str:
    return server[0]


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


def sse_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """The `data:` payloads of a streamed answer, JSON-decoded except the final [DONE]."""
    events: list[Any] = []
    with client.stream("POST", path, json=body) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_models_lists_the_embedded_model(client: httpx.Client) -> None:
    answer = client.get("/v1/models")
    assert answer.json()["data"][0]["id"] == "capplan-tiny-qwen3"
    assert answer.headers["x-capplan-backend"] == "transformers"


def test_completion_reports_exact_usage_and_length(client: httpx.Client) -> None:
    prompt = "Twenty-four characters."
    answer = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 17, "seed": 1})
    assert answer.status_code == 200
    body = answer.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"]) == 17  # one character per token on the tiny model
    assert body["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": 17,
        "total_tokens": len(prompt) + 17,
    }


def test_streamed_completion_sends_one_chunk_per_token_then_usage_then_done(
    client: httpx.Client,
) -> None:
    body = {
        "prompt": "Stream me.",
        "max_tokens": 9,
        "seed": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events(client, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    usage_chunk, finish_chunk = events[-2], events[-3]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 9
    assert finish_chunk["choices"][0]["finish_reason"] == "length"
    texts = [e["choices"][0]["text"] for e in events[:-3]]
    assert len(texts) == 9 and all(len(t) == 1 for t in texts)
    plain = client.post("/v1/completions", json={**body, "stream": False}).json()
    assert "".join(texts) == plain["choices"][0]["text"]  # same seed, same answer


def test_chat_answer_has_assistant_message_and_usage(client: httpx.Client) -> None:
    answer = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 8})
    body = answer.json()
    assert answer.status_code == 200
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert len(body["choices"][0]["message"]["content"]) == 8
    # <|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n: 3 special tokens + chars
    chars = len("user\n") + len(CHAT[0]["content"]) + len("\n") + len("assistant\n")
    assert body["usage"]["prompt_tokens"] == 3 + chars
    assert body["usage"]["completion_tokens"] == 8


def test_streamed_chat_sends_role_then_content_deltas(client: httpx.Client) -> None:
    events = sse_events(
        client,
        "/v1/chat/completions",
        {"messages": CHAT, "max_tokens": 5, "stream": True},
    )
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    contents = [e["choices"][0]["delta"].get("content", "") for e in events[1:-2]]
    assert len(contents) == 5 and all(len(c) == 1 for c in contents)
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_stop_string_ends_the_answer_with_finish_reason_stop(client: httpx.Client) -> None:
    request = {"prompt": "Stop test:", "max_tokens": 40, "seed": 9}
    text = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    stop = text[6:8]
    body = client.post("/v1/completions", json={**request, "stop": [stop]}).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["text"] == text[: text.index(stop)]


def test_openai_client_streams_chat_with_usage_included(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="capplan-tiny-qwen3",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0.7,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    finish = [reason for reason in finish if reason]
    usage = chunks[-1].usage
    assert len(content) == 12
    assert finish == ["length"]
    assert usage is not None and usage.completion_tokens == 12
    assert usage.total_tokens == usage.prompt_tokens + 12


def test_openai_client_completions_not_streamed(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    answer = client.completions.create(
        model="capplan-tiny-qwen3", prompt="abc", max_tokens=6, temperature=0
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    assert answer.choices[0].finish_reason == "length"
    assert len(answer.choices[0].text) == 6


def test_stats_show_the_real_backend_and_its_batching(client: httpx.Client) -> None:
    stats = client.get("/stats").json()
    assert stats["emulated"] is False
    details = stats["backend"]["details"]
    assert details["max_batch"] == 8
    assert details["batch_stats"]["decode_steps"] > 0  # live figures from the engine
    assert details["batch_stats"]["running"] == 0
    assert stats["memory"]["kind"] == "process_rss"
    kv = stats["kv_cache"]  # the pool, allocated at start: blocks, reserved and held
    assert kv["num_blocks"] * kv["block_size"] == kv["tokens"] == details["kv_cache"]["tokens"]
    assert (kv["reserved_blocks"], kv["used_blocks"], kv["usage"]) == (0, 0, 0.0)


def test_metrics_report_the_kv_cache_with_vllms_names(client: httpx.Client) -> None:
    kv = client.get("/stats").json()["kv_cache"]
    text = client.get("/metrics").text
    assert 'capplan:kv_cache_usage_perc{model_name="capplan-tiny-qwen3"} 0.0' in text
    config = (
        f'capplan:cache_config_info{{block_size="16",model_name="capplan-tiny-qwen3",'
        f'num_gpu_blocks="{kv["num_blocks"]}"}} 1.0'
    )
    assert config in text


def test_dropped_stream_stops_generation_and_frees_slot(server, client: httpx.Client) -> None:
    _, backend = server
    body = {"prompt": "Long answer:", "max_tokens": 3900, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as answer:
        lines = answer.iter_lines()
        while not next(lines).startswith("data: "):
            pass  # one token has arrived; now the client goes away

    def engine_busy() -> bool:
        return bool(backend.batching_stats()["running"] or client.get("/stats").json()["running"])

    deadline = time.monotonic() + 10
    while engine_busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.batching_stats()["running"] == 0
    assert client.get("/stats").json()["running"] == 0
    steps = backend.batching_stats()["decode_steps"]
    time.sleep(0.1)
    assert backend.batching_stats()["decode_steps"] == steps  # nothing decodes any more


def test_openai_client_streams_up_to_a_stop_string_split_across_tokens(
    base_url: str, client: httpx.Client
) -> None:
    oa = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    request: dict[str, Any] = {
        "model": "capplan-tiny-qwen3", "prompt": "Split stop:", "max_tokens": 30, "seed": 4,
    }  # fmt: skip
    text = oa.completions.create(**request).choices[0].text
    stop = text[8:11]  # three one-character tokens: the stop spans token boundaries
    cut = text.index(stop)
    before = client.get("/metrics").text
    chunks = list(
        oa.completions.create(
            **request, stop=[stop], stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == text[:cut]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    # The stop string's tokens were generated (and count) though their text was never sent.
    assert usage is not None and usage.completion_tokens == cut + len(stop)

    def generated(metrics: str) -> float:
        line = next(x for x in metrics.splitlines() if x.startswith("capplan:generation_tokens_"))
        return float(line.rsplit(" ", 1)[1])

    assert generated(client.get("/metrics").text) - generated(before) == usage.completion_tokens
