"""Queue timeout (503) and request timeout (504, generation stopped)."""

from __future__ import annotations

import json
import threading

import httpx

from tests.reference_server.conftest import ServerFactory, completion


def test_queue_timeout_answers_503_with_retry_after(emulated_server: ServerFactory) -> None:
    server = emulated_server(max_concurrent=1, queue_size=1, queue_timeout_s=0.3)
    server.backend.hold()
    holder = threading.Thread(
        target=httpx.post,
        args=(server.url + "/v1/completions",),
        kwargs={"json": completion(), "timeout": 30},
    )
    holder.start()
    server.wait_stats(lambda s: s["running"] == 1)
    answer = httpx.post(server.url + "/v1/completions", json=completion(), timeout=30)
    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "server_overloaded"
    assert "queue" in answer.json()["error"]["message"]
    assert int(answer.headers["retry-after"]) >= 1
    stats = server.stats()
    assert stats["queued"] == 0  # the timed-out waiter left the queue
    assert stats["counters"]["queue_timeout"] == 1
    server.backend.release()
    holder.join(10)


def test_request_timeout_answers_504_json_and_stops_generation(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(ttft_ms=0, tpot_ms=20, request_timeout_s=0.3)
    answer = httpx.post(server.url + "/v1/completions", json=completion(1000), timeout=30)
    assert answer.status_code == 504
    error = answer.json()["error"]
    assert error["type"] == "timeout"
    assert error["code"] == 504
    stats = server.wait_stats(lambda s: s["running"] == 0)
    assert stats["memory"]["kv_tokens_in_use"] == 0  # the generation stopped
    assert stats["counters"] == {"timeout": 1}


def test_request_timeout_before_first_token_gives_504_on_a_stream(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(ttft_ms=2000, request_timeout_s=0.2)
    answer = httpx.post(
        server.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True},
        timeout=30,
    )
    assert answer.status_code == 504
    assert answer.headers["content-type"].startswith("application/json")


def test_request_timeout_mid_stream_ends_with_an_error_event(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(ttft_ms=0, tpot_ms=20, request_timeout_s=0.3)
    with httpx.stream(
        "POST", server.url + "/v1/completions", json=completion(1000, stream=True), timeout=30
    ) as answer:
        assert answer.status_code == 200
        events = [line[5:].strip() for line in answer.iter_lines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == 504
    assert 1 < len(events) - 2 < 1000
    assert server.wait_stats(lambda s: s["running"] == 0)["memory"]["kv_tokens_in_use"] == 0
