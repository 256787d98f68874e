"""Real server processes over the tiny body with a real checkpoint's vocabulary (151,936)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]


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
    """`python -m reference_server ARGS --port 0` with one torch thread, ready to serve."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "reference_server", "--device", "cpu", "--port", "0", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        seen: list[str] = []
        url = None
        for line in process.stdout:
            seen.append(line)
            match = re.search(r"capplan serve: (http://\S+)", line)
            url = url or (match.group(1) if match else None)
            if "drain_timeout_s" in line:  # the last limit printed
                break
        if url is None:
            raise AssertionError("server never printed its URL:\n" + "".join(seen))
        deadline = time.monotonic() + 120
        while True:
            with suppress(httpx.TransportError):
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"{url} never became ready:\n" + "".join(seen))
            time.sleep(0.05)
        yield ServerProcess(process, url)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
