"""Fixtures for the server: the real app on 127.0.0.1 in a thread, over the emulated backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from capplan.settings import ServerSettings
from reference_server.app import create_app
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.testing import serve_in_thread


@dataclass
class RunningServer:
    url: str
    backend: Any
    app: Any

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/stats", timeout=10).json()

    def wait_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """Poll /stats until `predicate` holds (polling an observable state, not sleeping for
        a guessed duration)."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"/stats never matched; last: {stats}")
            time.sleep(0.01)


ServerFactory = Callable[..., RunningServer]


@pytest.fixture
def emulated_server() -> Iterator[ServerFactory]:
    """`emulated_server(ttft_ms=.., tpot_ms=.., backend=None, cuda=None, **config)` starts a
    server; all are shut down at teardown."""
    with ExitStack() as stack:

        def start(
            *,
            ttft_ms: float = 0.0,
            tpot_ms: float = 0.0,
            backend: Any = None,
            cuda: Any = None,
            kv_budget_bytes: int | None = None,
            kv_bytes_per_token: int = 0,
            tokens_per_chunk: int = 1,
            **config: Any,
        ) -> RunningServer:
            if backend is None:
                timing = EmulatedTiming(
                    ttft_ms=ttft_ms,
                    tpot_ms=tpot_ms,
                    kv_budget_bytes=kv_budget_bytes,
                    kv_bytes_per_token=kv_bytes_per_token,
                )
                backend = EmulatedBackend(timing, tokens_per_chunk=tokens_per_chunk)
            config.setdefault("backend", "emulated")
            app = create_app(ServerSettings(**config), backend, cuda=cuda)
            url = stack.enter_context(serve_in_thread(app, shutdown_timeout_s=2))
            # Release a held backend before shutdown so no test leaves requests parked.
            stack.callback(getattr(backend, "release", lambda: None))
            return RunningServer(url, backend, app)

        yield start


def completion(max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"prompt": "hello there", "max_tokens": max_tokens, **extra}
