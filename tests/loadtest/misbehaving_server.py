"""A raw asyncio HTTP server that fails the ways real deployments do, for the engines' tests.

The path picks the failure, so one server serves every test: a proxy's 500/502 HTML page, a
connection reset mid-stream, a stream that stops sending, and streams of several tokens per
chunk with usage only at the end, or no usage at all. `/v1/models` and `/metrics` answer 404,
except under `/listed/`, whose model list answers 200 and whose requests work like
`usage_at_end`. `misbehaving_server(vanish_after=N)` dies after N answers: it stops listening
and drops every connection, as a crashed server does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CHUNKS = 5
TOKENS_PER_CHUNK = 3  # each chunk carries "abc": three one-character tokens


def _sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class _Server:
    def __init__(self, vanish_after: int | None) -> None:
        self.vanish_after = vanish_after
        self.answered = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                path = head.split(b" ")[1].decode().strip("/")
                mode = path.split("/")[0]
                if mode == "listed" and path.endswith("models"):
                    await _models(writer)
                    continue
                if not await _answer("usage_at_end" if mode == "listed" else mode, writer):
                    return
                self.answered += 1
                if self.vanish_after is not None and self.answered >= self.vanish_after:
                    self.vanish()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)

    def vanish(self) -> None:
        assert self.server is not None
        self.server.close()  # nothing listens any more: new connections are refused
        for writer in list(self.writers):
            writer.transport.abort()


async def _models(writer: asyncio.StreamWriter) -> None:
    body = json.dumps({"object": "list", "data": [{"id": "listed", "object": "model"}]}).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    await writer.drain()


async def _answer(mode: str, writer: asyncio.StreamWriter) -> bool:
    """Writes one response; False when the connection is gone."""
    if mode in ("html500", "html502"):
        status = b"500 Internal Server Error" if mode == "html500" else b"502 Bad Gateway"
        page = b"<html><body><h1>" + status + b"</h1>nginx</body></html>"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: text/html\r\n"
            b"content-length: %d\r\n\r\n" % len(page) + page
        )
        await writer.drain()
        return True
    if mode not in ("reset", "stall", "usage_at_end", "no_usage"):
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return True
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )

    def send(data: bytes) -> None:
        writer.write(b"%x\r\n" % len(data) + data + b"\r\n")

    send(_sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
    for i in range(CHUNKS):
        send(_sse({"choices": [{"index": 7, "text": "abc", "finish_reason": None}]}))
        await writer.drain()
        if i == 2 and mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST, not FIN: what a crashed worker or proxy does
            return False
        if i == 2 and mode == "stall":
            await asyncio.sleep(3600)
    send(_sse({"choices": [{"index": 7, "text": "", "finish_reason": "length"}]}))
    if mode == "usage_at_end":
        usage = {"prompt_tokens": 4, "completion_tokens": CHUNKS * TOKENS_PER_CHUNK}
        send(_sse({"choices": [], "usage": usage}))
    send(b"data: [DONE]\n\n")
    send(b"")
    await writer.drain()
    return True


@contextmanager
def misbehaving_server(*, vanish_after: int | None = None) -> Iterator[str]:
    """Base URL of the server, running in a thread on 127.0.0.1 with an ephemeral port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncio.Server] = {}
    state = _Server(vanish_after)

    async def start() -> None:
        holder["server"] = state.server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    started.wait(10)
    port = holder["server"].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:

        async def shut() -> None:
            holder["server"].close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
