"""Emulated reference servers with exact timing, on 127.0.0.1, for the load-test tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from capplan.settings import ServerSettings
from reference_server.app import create_app
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.testing import serve_in_thread

REPO = Path(__file__).resolve().parents[2]

ServerFactory = Callable[..., AbstractContextManager[str]]


@contextmanager
def _emulated(
    *,
    ttft_ms: float = 0.0,
    tpot_ms: float = 0.0,
    tokens_per_chunk: int = 1,
    backend_out: list[EmulatedBackend] | None = None,
    **settings: Any,
) -> Iterator[str]:
    backend = EmulatedBackend(
        EmulatedTiming(ttft_ms=ttft_ms, tpot_ms=tpot_ms), tokens_per_chunk=tokens_per_chunk
    )
    if backend_out is not None:
        backend_out.append(backend)
    settings.setdefault("max_concurrent", 64)
    settings.setdefault("queue_size", 64)
    app = create_app(ServerSettings(backend="emulated", **settings), backend)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def emulated_server() -> ServerFactory:
    """`with emulated_server(ttft_ms=50, tpot_ms=10, max_concurrent=2) as url:` in a thread."""
    return _emulated
