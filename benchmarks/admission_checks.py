"""What each admission check costs, in the order the server runs them (docs/server.md).

In-process, on the embedded model's backend: each check of `ServerState` timed alone on a small
chat body and on a 3.9 MB one (the issue-11 attack), median of N runs. Reading the body is timed
through Starlette's Request over an ASGI receive that hands it over in 64 KiB pieces, as uvicorn
does (a fresh Request each run; making it is not timed). The huge prompt is refused by the
prompt limit, so its tokenization is also timed apart, once, to show what the limit saves.

    .venv/bin/python benchmarks/admission_checks.py [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capplan.settings import ServerSettings  # noqa: E402
from reference_server.generation import ApiError  # noqa: E402
from reference_server.server_state import ServerState  # noqa: E402
from reference_server.transformers_backend import TransformersBackend  # noqa: E402

API_KEY = "benchmark-key"
CHUNK = 65536  # uvicorn hands a body over in pieces of about this size


def _request_factory(body: bytes) -> Callable[[], Any]:
    """Makes a fresh Request for `body` (each can be read once); the slicing is done here, once,
    so only the check is timed."""
    from starlette.requests import Request

    pieces = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", f"Bearer {API_KEY}".encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers,
             "client": ("127.0.0.1", 5000), "query_string": b""}  # fmt: skip

    def make() -> Any:
        messages = [
            {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
            for i, piece in enumerate(pieces)
        ]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        return Request(scope, receive)

    return make


async def _time(work: Callable[[], Awaitable[Any]], runs: int) -> float:
    """Median seconds of `work` over `runs`; a refusal (ApiError) counts as done."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        with contextlib.suppress(ApiError):
            await work()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def measure(body: bytes, state: ServerState, runs: int) -> dict[str, float]:
    async def sync(fn: Callable[[], Any]) -> Any:
        return fn()

    parsed = state.parse(body, "chat")
    ids: list[int] = []
    limit = state.prompts.limit()
    chars = sum(len(m["content"]) for m in parsed.message_dicts())
    if limit is None or chars <= limit:
        ids = await state.prompts.tokenize(parsed)

    new_request = _request_factory(body)
    request = new_request()  # headers only: the checks that read no body share one

    async def read() -> bytes:
        return await state.read_body(new_request())

    async def gate() -> None:
        await state.gate.acquire()
        state.gate.release()

    checks: dict[str, Callable[[], Awaitable[Any]]] = {
        "declared size (413)": lambda: sync(lambda: state.check_declared_size(request)),
        "API key (401)": lambda: sync(lambda: state.check_auth(request)),
        "read body (413/408)": read,
        "JSON + schema (400/422)": lambda: sync(lambda: state.parse(body, "chat")),
        "rate limit (429)": lambda: state.check_rate(request),
        "prompt limit + tokenize (400)": lambda: state.prompts.tokenize(parsed),
        "max_tokens + context (400)": lambda: sync(lambda: state.max_tokens(parsed, len(ids))),
        "gate acquire + release (503)": gate,
    }
    return {name: await _time(work, runs) for name, work in checks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    backend = TransformersBackend(device="cpu")
    settings = ServerSettings(api_key=API_KEY, rate_limit="100000000/minute")

    async def run() -> None:
        await backend.start()
        state = ServerState(settings, backend, cuda=None)
        state.ready = True
        small = json.dumps({"messages": [{"role": "user", "content": "Plan the capacity for "
                           "Tuesday."}], "max_tokens": 16}).encode()  # fmt: skip
        huge_text = "x" * 3_900_000
        huge = json.dumps({"messages": [{"role": "user", "content": huge_text}]}).encode()
        small_costs = await measure(small, state, args.runs)
        huge_costs = await measure(huge, state, max(3, args.runs // 10))
        print(f"{'check, in order':32} {'small body':>12} {'3.9 MB body':>12}")
        for name in small_costs:
            print(f"{name:32} {small_costs[name] * 1e6:10.1f} µs {huge_costs[name] * 1e6:10.1f} µs")
        start = time.perf_counter()
        tokens = len(backend.encode_chat([{"role": "user", "content": huge_text}]))
        print(
            f"tokenizing the 3.9 MB prompt instead (refused by the limit of "
            f"{state.prompts.limit()} characters): {time.perf_counter() - start:.2f} s, "
            f"{tokens} tokens"
        )
        state.close()
        await backend.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
