"""One emulated reference server in its own process for the Locust tests (module scope: its
start-up is paid once). In its own process it shares no GIL with the engine under test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capplan.loadtest.launch import launched_server

TTFT_MS = 50.0
TPOT_MS = 10.0


@pytest.fixture(scope="module")
def emulated_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = Path(tmp_path_factory.mktemp("server")) / "server.log"
    args = ["--backend", "emulated", "--ttft-ms", str(TTFT_MS), "--tpot-ms", str(TPOT_MS)]
    args += ["--max-concurrent", "64", "--queue-size", "64"]
    with launched_server(args, log_path=log, ready_timeout_s=60.0) as url:
        yield url


@pytest.fixture
def emulated_timing() -> tuple[float, float]:
    """(TTFT ms, TPOT ms) the emulated server was started with."""
    return TTFT_MS, TPOT_MS
