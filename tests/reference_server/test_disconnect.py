"""A client that goes away frees its slot and stops its generation at once."""

from __future__ import annotations

import socket

import httpx

from tests.reference_server.conftest import ServerFactory, completion


def _raw_request(url: str, body: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def test_dropped_streams_bring_running_back_to_zero(emulated_server: ServerFactory) -> None:
    server = emulated_server(ttft_ms=0, tpot_ms=20, max_concurrent=8)
    clients = [httpx.Client(timeout=10) for _ in range(4)]
    streams = []
    readers = []  # kept alive: a collected line iterator closes its response
    for client in clients:
        stream = client.stream(
            "POST", server.url + "/v1/completions", json=completion(1000, stream=True)
        )
        response = stream.__enter__()
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data:")  # mid-stream: a token has arrived
        streams.append(stream)
        readers.append(lines)
    assert server.stats()["running"] == 4
    for client in clients:
        client.close()  # drop the connection without reading on
    stats = server.wait_stats(lambda s: s["running"] == 0)
    assert stats["counters"].get("client_disconnect") == 4
    # The generations stopped too: no KV is held for them any more.
    assert stats["memory"]["kv_tokens_in_use"] == 0


def test_client_dropped_while_waiting_for_first_token_frees_slot(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(max_concurrent=2, queue_size=2)
    server.backend.hold()
    socks = [_raw_request(server.url, b'{"prompt": "hi", "max_tokens": 5, "stream": true}')]
    socks.append(_raw_request(server.url, b'{"prompt": "hi", "max_tokens": 5}'))
    socks.append(_raw_request(server.url, b'{"prompt": "hi", "max_tokens": 5}'))  # queued
    server.wait_stats(lambda s: s["running"] == 2 and s["queued"] == 1)
    for sock in socks:
        sock.close()
    stats = server.wait_stats(lambda s: s["running"] == 0 and s["queued"] == 0)
    assert stats["counters"].get("client_disconnect") == 3
    server.backend.release()
    # The server still serves.
    answer = httpx.post(server.url + "/v1/completions", json=completion(), timeout=10)
    assert answer.status_code == 200
