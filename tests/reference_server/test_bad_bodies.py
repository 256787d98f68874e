"""Bad bodies get a 4xx JSON answer naming the problem, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from capplan.settings import ServerSettings
from reference_server.app import create_app
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.testing import serve_in_thread
from tests.reference_server.conftest import RunningServer, ServerFactory


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """One server for the module: bad bodies change nothing it holds."""
    backend = EmulatedBackend(EmulatedTiming(ttft_ms=0, tpot_ms=0))
    config = ServerSettings(
        backend="emulated", max_tokens_cap=64, max_context=128, max_body_bytes=10_000
    )
    app = create_app(config, backend)
    with serve_in_thread(app) as url:
        yield RunningServer(url, backend, app)


BAD_COMPLETIONS: list[tuple[Any, int, str | None]] = [
    ({}, 422, "prompt"),  # missing field
    ({"prompt": 12}, 422, "prompt"),  # wrong type
    ({"prompt": ["a", "b"]}, 422, "prompt"),  # batch prompts
    ({"prompt": "hi", "max_tokens": -1}, 422, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 0}, 422, "max_tokens"),
    ({"prompt": "hi", "max_tokens": "many"}, 422, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 1.5}, 422, "max_tokens"),
    ({"prompt": "hi", "temperature": "hot"}, 422, "temperature"),
    ({"prompt": "hi", "temperature": -1}, 422, "temperature"),
    ({"prompt": "hi", "top_p": 0}, 422, "top_p"),
    ({"prompt": "hi", "stream": {"yes": 1}}, 422, "stream"),
    ({"prompt": "hi", "stop": ["a"] * 5}, 422, "stop"),
    ({"prompt": "hi", "stop": 3}, 422, "stop"),
    ({"prompt": "hi", "seed": "x"}, 422, "seed"),
    ({"prompt": "hi", "seed": 2**64}, 422, "seed"),  # a torch generator would raise on it
    ({"prompt": "hi", "n": 2}, 422, "n"),
    # Answers this server cannot give are refused, not silently answered without them.
    ({"prompt": "hi", "logprobs": 3}, 422, "logprobs"),
    ({"prompt": "hi", "echo": True}, 422, "echo"),
    ({"prompt": "hi", "stream_options": "usage"}, 422, "stream_options"),
    ({"prompt": ""}, 400, "prompt"),  # nothing to continue
    ({"prompt": "word " * 100, "max_tokens": 64}, 400, "max_tokens"),  # over the context
    ([1, 2], 400, "body"),
    ("text", 400, "body"),
    (None, 400, "body"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_COMPLETIONS)
def test_bad_completion_body_gets_4xx_json(
    server: RunningServer, body: Any, status: int, param: str | None
) -> None:
    answer = httpx.post(server.url + "/v1/completions", json=body, timeout=10)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == status
    assert error["message"]
    assert param is None or (error["param"] or "").startswith(param)


BAD_CHATS: list[tuple[Any, int, str]] = [
    ({}, 422, "messages"),
    ({"messages": []}, 422, "messages"),
    ({"messages": "hi"}, 422, "messages"),
    ({"messages": [{"content": "hi"}]}, 422, "messages.0.role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, 422, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, 422, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 422, "logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 422, "top_logprobs"),
    # The deepest error of a union names the real problem, not pydantic's member tags.
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        422,
        "messages.0.content.0.type",
    ),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_CHATS)
def test_bad_chat_body_gets_4xx_json(
    server: RunningServer, body: Any, status: int, param: str
) -> None:
    answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert answer.status_code == status, answer.text
    assert (answer.json()["error"]["param"] or "").startswith(param)


@pytest.mark.parametrize(
    "raw", [b"{not json", b"\xff\xfe\x00", b"", b'{"prompt": "hi"', b"[" * 100_00]
)
def test_unparseable_body_gets_400(server: RunningServer, raw: bytes) -> None:
    answer = httpx.post(
        server.url + "/v1/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code in (400, 413)
    assert "error" in answer.json()


def test_huge_body_gets_413(server: RunningServer) -> None:
    body = {"prompt": "x" * 20_000, "max_tokens": 4}
    answer = httpx.post(server.url + "/v1/completions", json=body, timeout=10)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == 413


def test_huge_chunked_body_without_length_gets_413(server: RunningServer) -> None:
    def chunks() -> Any:
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    answer = httpx.post(server.url + "/v1/completions", content=chunks(), timeout=10)
    assert answer.status_code == 413


def test_max_tokens_above_cap_is_clamped_and_reported(server: RunningServer) -> None:
    answer = httpx.post(
        server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 100}, timeout=10
    )
    assert answer.status_code == 200
    assert answer.headers["x-capplan-max-tokens-clamped"] == "100->64"
    assert answer.json()["usage"]["completion_tokens"] == 64


def test_max_tokens_above_cap_is_422_when_strict(emulated_server: ServerFactory) -> None:
    server = emulated_server(max_tokens_cap=64, strict=True)
    answer = httpx.post(
        server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 100}, timeout=10
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["param"] == "max_tokens"


def test_unknown_fields_are_ignored(server: RunningServer) -> None:
    body = {"prompt": "hi", "max_tokens": 2, "logprobs": None, "user": "u1", "echo": False}
    answer = httpx.post(server.url + "/v1/completions", json=body, timeout=10)
    assert answer.status_code == 200


def test_fields_real_chat_clients_send_are_accepted(server: RunningServer) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": [{"type": "text", "text": "héllo 🌍"}]},
        ],
        "max_tokens": 2, "tools": [tool], "tool_choice": "auto", "parallel_tool_calls": False,
        "response_format": {"type": "text"}, "presence_penalty": 0.5, "frequency_penalty": 0.1,
        "logit_bias": {"1": 2}, "logprobs": False, "n": 1, "user": "u1", "ignore_eos": True,
    }  # fmt: skip
    answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["finish_reason"] == "length"


def test_no_bad_body_was_counted_as_a_server_error(server: RunningServer) -> None:
    for body, _, _ in BAD_COMPLETIONS:
        httpx.post(server.url + "/v1/completions", json=body, timeout=10)
    counters = server.stats()["counters"]
    assert counters["invalid"] >= len(BAD_COMPLETIONS)
    assert set(counters) <= {"invalid", "too_large", "ok"}
