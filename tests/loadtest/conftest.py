"""Emulated reference servers with exact timing, on 127.0.0.1, for the load-test tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from reference_server.app import create_app
from reference_server.config import ServerConfig
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.testing import serve_in_thread

SERVER_MAIN = Path(__file__).with_name("emulated_server_main.py")
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
    app = create_app(ServerConfig(backend="emulated", **settings), backend)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def emulated_server() -> ServerFactory:
    """`with emulated_server(ttft_ms=50, tpot_ms=10, max_concurrent=2) as url:` in a thread."""
    return _emulated


@contextmanager
def emulated_subprocess(ttft_ms: float, tpot_ms: float, **settings: Any) -> Iterator[str]:
    """The same server in its own process: it then takes no GIL time from the client, so
    timing tests measure the client's accuracy rather than a shared interpreter."""
    args = [sys.executable, str(SERVER_MAIN), str(ttft_ms), str(tpot_ms)]
    args += [f"{k}={v}" for k, v in settings.items()]
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        assert url.startswith("http://"), f"server did not start: {url!r}"
        deadline = time.monotonic() + 30
        while httpx.get(url + "/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
