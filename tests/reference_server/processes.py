"""`python -m reference_server` as a child process, as users run it: for what only a whole
process shows (signals, exit status, its open-file limit, its own GIL)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def server_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    open_files: int | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """`python -m reference_server --port 0 ARGS` (emulated unless ARGS name a backend); yields
    (process, base URL, what it printed about itself). `open_files` lowers its RLIMIT_NOFILE."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    backend = [] if "--backend" in args else ["--backend", "emulated"]
    command = [sys.executable, "-m", "reference_server", *backend, "--port", "0", *args]
    if open_files is not None:
        # Lowered by a tiny Python that then becomes the server (exec): no preexec_fn, which
        # is unsafe in a parent that runs threads (test servers do).
        lower = (
            "import os, resource, sys; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({open_files}, hard)); "
            "os.execv(sys.executable, sys.argv[1:])"
        )
        command = [sys.executable, "-c", lower, *command]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: cleanup reaches gunicorn's workers too
    )
    try:
        assert process.stdout is not None
        seen = []
        url = None
        for line in process.stdout:
            seen.append(line)
            match = re.search(r"capplan serve: (http://\S+)", line)
            url = url or (match.group(1) if match else None)
            if "drain_timeout_s" in line:  # the last limit printed
                break
        if url is None:
            raise AssertionError("server never printed its URL:\n" + "".join(seen))
        # Read on in the background: a full pipe would block the server on its next log line.
        # `process.output_lines` is everything it printed so far.
        process.output_lines = seen  # type: ignore[attr-defined]
        threading.Thread(target=seen.extend, args=(process.stdout,), daemon=True).start()
        wait_ready(url, ready_timeout_s)
        yield process, url, "".join(seen)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # no-op after a clean exit
        process.wait(10)


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)  # polling an observable state, not waiting a guessed duration
    raise AssertionError(f"{url} never became ready")
