"""Real server processes over the tiny body with a real checkpoint's vocabulary (151,936)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reference_server import processes


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/stats", timeout=30).json()

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak since `reset_peak`) of the server process, in bytes."""
        with open(f"/proc/{self.process.pid}/status") as status:
            rows = [line.split() for line in status if line.startswith(("VmRSS", "VmHWM"))]
        return {row[0].rstrip(":"): int(row[1]) * 1024 for row in rows}

    def reset_peak(self) -> None:
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS (Linux)

    def wait_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 30
    ) -> None:
        """Poll /stats until `predicate` holds (an observable state, not a guessed sleep)."""
        deadline = time.monotonic() + timeout_s
        while not predicate(stats := self.stats()):
            if time.monotonic() > deadline:
                raise AssertionError(f"/stats never matched; last: {stats}")
            time.sleep(0.02)


@pytest.fixture(scope="session")
def big_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model's body with 151,936 tokens (Qwen3's), saved with its tokenizer."""
    from reference_server.tiny_model import BIG_VOCAB, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-151936", BIG_VOCAB)


@contextmanager
def server_process(*args: str) -> Iterator[ServerProcess]:
    """`python -m reference_server --device cpu ARGS` with one torch thread, ready to serve."""
    one_thread = {"OMP_NUM_THREADS": "1"}
    with processes.server_process(
        "--backend", "transformers", "--device", "cpu", *args, env=one_thread, ready_timeout_s=120
    ) as (process, url, _):
        yield ServerProcess(process, url)
