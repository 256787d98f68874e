"""Child processes of a load test (a launched reference server, Locust processes): started in
their own session with output to a log, stopped politely, and the free port they listen on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from typing import IO, Any

TERM_TIMEOUT_S = 10.0  # after SIGTERM, how long before SIGKILL


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(command: Sequence[str], log: IO[Any]) -> subprocess.Popen[bytes]:
    """Starts `command`, its output appended to `log`, in its own session: the user's Ctrl-C
    reaches capplan only, which then stops its children in order."""
    return subprocess.Popen(
        list(command),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop(
    process: subprocess.Popen[bytes],
    *,
    grace_s: float = 0.0,
    term_timeout_s: float = TERM_TIMEOUT_S,
) -> None:
    """Lets it exit on its own for `grace_s`, then SIGTERM, then SIGKILL after `term_timeout_s`."""
    if process.poll() is not None:
        return
    if grace_s > 0:
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            pass
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=term_timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
