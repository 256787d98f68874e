"""`--launch`: the reference server as a subprocess on a free 127.0.0.1 port, for one run."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from capplan.errors import InputError
from capplan.loadtest.child_process import free_port, spawn, stop

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0


def server_command(args: Sequence[str], port: int) -> list[str]:
    """`python -m reference_server ARGS --host 127.0.0.1 --port PORT`."""
    return [
        sys.executable,
        "-m",
        "reference_server",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


@contextlib.contextmanager
def launched_server(
    args: Sequence[str], *, log_path: Path, ready_timeout_s: float = READY_TIMEOUT_S
) -> Iterator[str]:
    """Starts the server, waits for /ready, yields its base URL, and stops it (SIGTERM) after."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # Its own session: the user's Ctrl-C stops the load test, which then drains and stops
        # the server itself.
        process = spawn(server_command(args, port), log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, ready_timeout_s, log_path)
        yield url
    finally:
        stop(process, term_timeout_s=STOP_TIMEOUT_S)  # SIGTERM: the server drains, then exits


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-800:].strip()
                raise InputError(
                    f"the launched server exited with code {process.returncode}; "
                    f"check its options (log {log}): {tail.splitlines()[-1] if tail else ''}"
                )
            try:
                if client.get(f"{url}/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise InputError(f"the launched server was not ready within {timeout_s:g} s (log {log})")
