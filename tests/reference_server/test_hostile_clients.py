"""Clients that try to hold, bypass or break the server (issue 11), over real HTTP on 127.0.0.1
against the emulated backend: a stalled reader (2), rate-limit identities (3), invalid text (4),
and the connection limits one by one (5; against a real open-file limit: test_hostile_process)."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest

from reference_server.emulated import EmulatedBackend, EmulatedTiming
from tests.reference_server.bad_text import check_refusals, send_all_on_one_connection
from tests.reference_server.conftest import ServerFactory, completion
from tests.reference_server.raw_http import connect, exchange, read_until_closed, request_bytes

# --- 2. a client that stops reading its stream --------------------------------------------------


@pytest.mark.slow
def test_a_client_that_stops_reading_its_stream_loses_its_slot_at_the_request_timeout(
    emulated_server: ServerFactory,
) -> None:
    # Tokens as fast as the loop makes them, 64 to a chunk: the socket buffers between server
    # and client (a few MB on loopback) fill in about 1.5 s here, well before the 5 s timeout.
    timing = EmulatedTiming(ttft_ms=0, tpot_ms=0, max_context=2_000_000)
    server = emulated_server(
        backend=EmulatedBackend(timing, tokens_per_chunk=64), max_concurrent=1, queue_size=0,
        request_timeout_s=5.0, max_tokens_cap=1_000_000,
    )  # fmt: skip
    stalled = connect(server.url, receive_buffer=4096)
    body = json.dumps(completion(1_000_000, stream=True)).encode()
    stalled.sendall(request_bytes("POST", "/v1/completions", body))  # and never reads
    server.wait_stats(lambda s: s["running"] == 1)
    # Bounded by --request-timeout plus WRITE_GRACE_S to write the last events; the generous
    # wait is for a loaded machine, not part of the bound.
    stats = server.wait_stats(lambda s: s["running"] == 0, timeout_s=60)
    assert stats["counters"] == {"stalled_client": 1}
    assert stats["memory"]["kv_tokens_in_use"] == 0  # its generation stopped
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert re.search(r'request_rejections_total\{[^}]*reason="stalled_client"\} 1\.0', metrics)
    # The slot serves the next client, and the stalled one's connection was dropped.
    assert httpx.post(server.url + "/v1/completions", json=completion(), timeout=10).is_success
    stalled.settimeout(30)
    assert read_until_closed(stalled).startswith(b"HTTP/1.1 200")
    stalled.close()


# --- 3. rate-limit identities --------------------------------------------------------------------


def _post(url: str, **headers: str) -> int:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.post(
        url + "/v1/completions", json=completion(), headers=named, timeout=10
    ).status_code


def test_neither_random_bearer_tokens_nor_forwarded_headers_bypass_the_rate_limit(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(rate_limit="2/minute")  # no --api-key, no --forwarded-allow-ips
    codes = [
        _post(
            server.url,
            authorization=f"Bearer {uuid.uuid4().hex}",
            x_forwarded_for=f"10.0.0.{i}",
        )
        for i in range(4)
    ]
    assert codes == [200, 200, 429, 429]  # one client: its address, whatever it claims


def test_forwarded_for_is_the_client_only_from_an_allowed_proxy(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(rate_limit="1/minute", forwarded_allow_ips="127.0.0.1")
    alice, bob = {"x_forwarded_for": "10.0.0.1"}, {"x_forwarded_for": "10.0.0.2"}
    assert [_post(server.url, **alice), _post(server.url, **bob), _post(server.url, **alice)] == [
        200, 200, 429,
    ]  # fmt: skip


def test_rate_limit_keys_on_the_api_key_the_server_accepts(emulated_server: ServerFactory) -> None:
    server = emulated_server(rate_limit="1/minute", api_key="k1", forwarded_allow_ips="*")
    key = {"authorization": "Bearer k1"}
    # Two addresses, one accepted key: one client.
    codes = [_post(server.url, **key, x_forwarded_for=ip) for ip in ("10.0.0.1", "10.0.0.2")]
    assert codes == [200, 429]
    assert _post(server.url, authorization="Bearer wrong") == 401  # refused before counting


# --- 4. invalid text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", b'{"prompt": "\\udc00"}', "prompt"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udc00"}]}',
         "messages.0.content"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_counted_422_and_the_connection_lives_on(
    emulated_server: ServerFactory, path: str, body: bytes, param: str
) -> None:
    server = emulated_server()
    sock = connect(server.url)
    refused = exchange(sock, "POST", path, body)
    assert refused.status == 422, refused
    assert refused.json()["error"]["param"] == param
    assert "surrogate" in refused.json()["error"]["message"]
    again = exchange(sock, "POST", "/v1/completions", json.dumps(completion()).encode())
    assert again.status == 200  # the same connection serves on
    sock.close()
    assert server.stats()["counters"] == {"invalid": 1, "ok": 1}
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert re.search(r'request_rejections_total\{[^}]*reason="invalid"\} 1\.0', metrics)


def test_invalid_text_in_every_string_field_is_refused_never_a_500(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server()
    results = send_all_on_one_connection(server.url)
    check_refusals(results)
    counters = server.stats()["counters"]
    assert "error" not in counters
    assert counters["invalid"] == sum(1 for _, status, _ in results if status >= 400)


# --- 5, in-process: the connection limits one by one ---------------------------------------------


def test_headers_not_complete_within_the_header_timeout_get_408_and_close(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(header_timeout_s=0.5)
    partial, idle = connect(server.url), connect(server.url)
    partial.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # then nothing
    answer = read_until_closed(partial)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code": 408' in answer and b"headers not received within 0.5 s" in answer
    assert read_until_closed(idle) == b""  # nothing of a request: closed without an answer
    assert server.stats()["counters"] == {"header_timeout": 1}


def test_a_body_not_complete_within_the_body_timeout_gets_408_and_close(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(body_timeout_s=0.5)
    sock = connect(server.url)
    head = request_bytes("POST", "/v1/completions", b"x" * 100)[:-100]  # Content-Length: 100
    sock.sendall(head + b'{"prompt": ')  # and the other 89 bytes never come
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["param"] == "body"
    assert server.stats()["counters"] == {"body_timeout": 1}


def test_connections_over_the_limit_get_a_503_at_once(emulated_server: ServerFactory) -> None:
    server = emulated_server(max_connections=3)
    held = [connect(server.url) for _ in range(3)]
    refused = connect(server.url)
    refused.sendall(request_bytes("GET", "/health"))
    answer = read_until_closed(refused)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in answer and b"open connections" in answer
    for sock in held:
        sock.close()
    stats = server.wait_stats(lambda s: s["connections"]["open"] <= 1)
    assert stats["counters"] == {"too_many_connections": 1}
    assert stats["connections"]["max"] == 3


def test_unparseable_http_is_a_counted_json_400(emulated_server: ServerFactory) -> None:
    server = emulated_server()
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000):
        sock = connect(server.url)
        sock.sendall(garbage)
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == 400
    assert server.stats()["counters"] == {"invalid_http": 2}
