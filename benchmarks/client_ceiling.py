"""The load client's ceiling: non-streamed requests/s on one core, and concurrent streams held
with a median TTFT error under 2 ms.

    .venv/bin/python benchmarks/client_ceiling.py [--server raw|reference] [--levels 16,64,...]

The client (capplan's httpx engine, `capplan.loadtest.httpx.ceiling`) is pinned to one core. The
server runs in its own process on the other cores:
- `raw` (default): a minimal asyncio OpenAI-style server in this file with exact timing
  (tokens on absolute deadlines, ~20 µs a request), so the figure is the client's own limit;
- `reference`: the reference server's emulated backend (`python -m reference_server`), whose
  FastAPI stack usually runs out first (the figure is then the server's, a lower bound for the
  client).
Figures are recorded in docs/benchmarks.md under "## load client".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_CHUNK = b'data: {"choices":[{"index":0,"text":" tok","finish_reason":null}]}\n\n'


class _RawOpenAI(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time per connection; SSE in chunked encoding."""

    def __init__(self, ttft_s: float, tpot_s: float) -> None:
        self.ttft_s = ttft_s
        self.tpot_s = tpot_s
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._handle(head[0].split(" ")[1], body)

    def _send_json(self, obj: dict[str, Any]) -> None:
        payload = json.dumps(obj).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )

    def _handle(self, path: str, body: bytes) -> None:
        if path.endswith("/models"):
            self._send_json({"data": [{"id": "raw"}]})
            return
        request = json.loads(body or b"{}")
        n = int(request.get("max_tokens", 16))
        loop = asyncio.get_running_loop()
        start = loop.time()
        usage = {"prompt_tokens": 16, "completion_tokens": n, "total_tokens": 16 + n}
        if not request.get("stream"):
            done = start + self.ttft_s + (n - 1) * self.tpot_s
            text = " tok" * n
            answer = {"choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                      "usage": usage}  # fmt: skip
            loop.call_at(done, self._send_json, answer)
            return
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )

        def chunk(i: int) -> None:
            data = head + _frame(_CHUNK) if i == 0 else _frame(_CHUNK)
            if i == n - 1:
                tail = b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
                data += _frame(tail) + _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"
            self.transport.write(data)

        for i in range(n):
            loop.call_at(start + self.ttft_s + i * self.tpot_s, chunk, i)


def _frame(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _serve_raw(sock: socket.socket, ttft_s: float, tpot_s: float, cpus: set[int]) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _RawOpenAI(ttft_s, tpot_s), sock=sock)
        await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("raw", "reference"), default="raw")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--tpot-ms", type=float, default=20.0)
    parser.add_argument("--levels", default="16,32,64,128,256,512")
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()

    from capplan.loadtest.httpx.ceiling import (
        CeilingResult,
        measure_requests_per_s,
        measure_streams,
    )

    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, server_cpus = cpus[0], set(cpus[1:]) or {cpus[0]}
    levels = [int(x) for x in args.levels.split(",")]
    print(
        f"client pinned to cpu {client_cpu}; server ({args.server}) on cpus {sorted(server_cpus)}"
    )
    print(
        f"host: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}; "
        f"python {sys.version.split()[0]}"
    )

    def run(fast_url: str, url: str) -> None:
        """Non-streamed figures on the zero-delay server, streams on the timed one."""
        for concurrency in (1, 8, 32, 64):
            rps, cpu = measure_requests_per_s(
                fast_url, concurrency=concurrency, duration_s=args.duration
            )
            print(f"non-streamed, 1 token, concurrency {concurrency:3d}: {rps:7.0f} req/s "
                  f"(client loop CPU {cpu:.0%})")  # fmt: skip
        offset, streams = measure_streams(
            url, ttft_ms=args.ttft_ms, tpot_ms=args.tpot_ms, levels=levels
        )
        print(f"streams: TTFT {args.ttft_ms:g} ms, TPOT {args.tpot_ms:g} ms, 16 tokens; "
              f"offset at concurrency 1 {offset:.2f} ms")  # fmt: skip
        for s in streams:
            print(f"  {s.concurrency:4d} streams: TTFT p50 {s.ttft_p50_ms:7.2f} ms  error p50 "
                  f"{s.error_p50_ms:+6.2f} ms p99 {s.error_p99_ms:+7.2f} ms  loop lag p99 "
                  f"{s.loop_lag_p99_ms:5.1f} ms  loop CPU {s.loop_cpu_fraction:.0%}  "
                  f"failed {s.failed}")  # fmt: skip
        held = CeilingResult(streams=streams).streams_held
        print(f"streams held with median TTFT error < 2 ms: {held}")

    if args.server == "raw":
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(4096)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        process = multiprocessing.get_context("fork").Process(
            target=_serve_raw, args=(sock, args.ttft_ms / 1000, args.tpot_ms / 1000, server_cpus),
            daemon=True,
        )  # fmt: skip
        process.start()
        # The non-streamed figure wants no server wait: a second raw server with zero timing.
        sock0 = socket.socket()
        sock0.bind(("127.0.0.1", 0))
        sock0.listen(4096)
        fast = multiprocessing.get_context("fork").Process(
            target=_serve_raw, args=(sock0, 0.0, 0.0, server_cpus), daemon=True
        )
        fast.start()
        time.sleep(0.3)
        os.sched_setaffinity(0, {client_cpu})
        try:
            run(f"http://127.0.0.1:{sock0.getsockname()[1]}", url)
        finally:
            process.terminate()
            fast.terminate()
        return

    from capplan.loadtest.launch import launched_server

    log = Path(tempfile.gettempdir()) / "client-ceiling-server.log"
    limits = ["--max-concurrent", "4096", "--queue-size", "4096", "--max-tokens-cap", "4096"]
    zero = ["--backend", "emulated", "--ttft-ms", "0", "--tpot-ms", "0", *limits]
    timed = ["--backend", "emulated", "--ttft-ms", str(args.ttft_ms), "--tpot-ms",
             str(args.tpot_ms), *limits]  # fmt: skip
    with (
        launched_server(zero, log_path=log) as fast_url,
        launched_server(timed, log_path=log) as url,
    ):
        # The servers keep every core but the client's; the client then takes its one core.
        for server in _children():
            os.sched_setaffinity(server, server_cpus)
        os.sched_setaffinity(0, {client_cpu})
        run(fast_url, url)


def _children() -> list[int]:
    """Process ids of this process's children (the launched servers), from /proc."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "stat").read_text().split(") ")[1].split()[1] == me:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


if __name__ == "__main__":
    main()
