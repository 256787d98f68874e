"""What only a whole server process shows (issue 11): slowloris connections against its
open-file limit (5), and a drain that runs past --drain-timeout (6)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from typing import Any

import httpx
import pytest

from tests.reference_server.processes import server_process
from tests.reference_server.raw_http import connect, read_until_closed

# --- 5. slowloris against a 256-file limit ------------------------------------------------------

SLOW_CLIENTS = 300


def _slowloris(url: str) -> socket.socket:
    """A connection that sends the start of a request and then nothing."""
    sock = connect(url, timeout_s=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applica")
    return sock


@pytest.mark.slow
def test_slowloris_connections_get_503_then_408_and_never_exhaust_the_open_files() -> None:
    # The header timeout comes from the environment, which a server without the setting ignores.
    env = {"CAPPLAN_HEADER_TIMEOUT_S": "3"}
    with server_process(env=env, open_files=256) as (process, url, _):
        socks = [_slowloris(url) for _ in range(SLOW_CLIENTS)]
        # More connections than the process may hold: a newcomer gets a clear answer at once,
        # not a wait in the listen backlog (what EMFILE gave: /health hung).
        during = httpx.get(url + "/health", timeout=5)
        assert during.status_code in (200, 503), during.text
        if during.status_code == 503:
            assert "open connections" in during.json()["error"]["message"]
            assert during.headers["retry-after"] == "1"
        # Each slow client is answered and dropped: refused at once (503), or at the header
        # deadline (408); none is left holding a descriptor.
        answers = [read_until_closed(sock) for sock in socks]
        for sock in socks:
            sock.close()
        refused = sum(answer.startswith(b"HTTP/1.1 503") for answer in answers)
        timed_out = sum(answer.startswith(b"HTTP/1.1 408") for answer in answers)
        assert refused + timed_out + sum(not answer for answer in answers) == SLOW_CLIENTS
        assert refused >= 1 and timed_out >= 1
        after = httpx.get(url + "/health", timeout=5)
        assert after.status_code == 200
        stats = httpx.get(url + "/stats", timeout=5).json()
        from reference_server.connections import connection_budget

        # The open-file limit less a reserve and the accept backlog (connections.py).
        assert stats["connections"]["max"] == connection_budget(None, open_files=256)[0] == 144
        assert stats["counters"]["header_timeout"] == timed_out
        probe_refused = during.status_code == 503
        assert stats["counters"]["too_many_connections"] >= refused + probe_refused
        log = "".join(process.output_lines)
        assert "Too many open files" not in log and "out of system resource" not in log, log


# --- 6. a drain past --drain-timeout ------------------------------------------------------------


async def _stream(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """One long stream; what came back: status, its data events, and how it ended."""
    body = {"prompt": "drain", "max_tokens": 1000, "stream": True}
    events: list[str] = []
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as answer:
            if answer.status_code != 200:
                await answer.aread()
                return {"status": answer.status_code, "body": answer.text, "events": events}
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        return {"status": 200, "events": events, "ended": "cleanly"}
    except httpx.HTTPError as exc:  # cut without an end
        return {"status": 200, "events": events, "ended": type(exc).__name__}


@pytest.mark.slow
@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_a_drain_past_its_timeout_ends_each_stream_with_an_error_and_says_so_on_exit(
    server: str,
) -> None:
    args = ("--ttft-ms", "10", "--tpot-ms", "50", "--max-tokens-cap", "1000",
            "--max-concurrent", "2", "--queue-size", "4", "--drain-timeout", "1",
            "--server", server, "--workers", "1")  # fmt: skip
    with server_process(*args) as (process, url, _):

        async def main() -> list[dict[str, Any]]:
            async with httpx.AsyncClient(timeout=30) as client:
                # 2 streams running (50 s each at 50 ms a token), 1 queued behind them.
                load = [asyncio.create_task(_stream(client, url)) for _ in range(3)]
                while True:
                    stats = (await client.get(url + "/stats")).json()
                    if stats["running"] == 2 and stats["queued"] == 1:
                        break
                    await asyncio.sleep(0.01)  # polling an observable state
                process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*load)

        results = asyncio.run(main())
        streams = [r for r in results if "ended" in r]
        assert len(streams) == 2, results
        for stream in streams:
            assert stream["ended"] == "cleanly", stream
            assert stream["events"][-1] == "[DONE]"
            error = json.loads(stream["events"][-2])["error"]
            assert error["code"] == 503 and "--drain-timeout" in error["message"]
            assert len(stream["events"]) > 2  # tokens came before the cut
        (queued,) = [r for r in results if "ended" not in r]
        assert queued["status"] == 503, queued
        assert "--drain-timeout" in json.loads(queued["body"])["error"]["message"]
        from reference_server.serving import DRAIN_INCOMPLETE_EXIT

        assert process.wait(30) == DRAIN_INCOMPLETE_EXIT
