"""Run an app on 127.0.0.1 in a background thread: real sockets, real HTTP, for tests and
benchmarks."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serve_in_thread(
    app: Any,
    *,
    wait_ready: bool = True,
    startup_timeout_s: float = 30.0,
    shutdown_timeout_s: float = 10.0,
) -> Iterator[str]:
    """Serve `app` with uvicorn on an ephemeral port; yields the base URL
    (`http://127.0.0.1:PORT`). With `wait_ready`, waits for `GET /ready` to answer 200 when the
    app has that route. On exit, shuts down gracefully (in-flight requests get
    `shutdown_timeout_s`) and joins the thread."""
    from reference_server.serving import uvicorn_config

    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    # The limits and proxy trust every launch has (reference_server/serving.py).
    config = uvicorn_config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=int(max(1, shutdown_timeout_s)),
        access_log=False,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # surfaced to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError(f"server failed to start: {failure[:1]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {startup_timeout_s} s")
            time.sleep(0.005)
        if wait_ready:
            _wait_ready(base_url, deadline)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout_s + 5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket. `IPPROTO_TCP` explicitly: asyncio sets TCP_NODELAY on accepted
    connections only when the listener's proto says TCP, and without it Nagle's algorithm and
    delayed ACKs add 40 ms to every keep-alive response."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _wait_ready(base_url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(base_url + "/ready", timeout=5) as answer:
                if answer.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return  # an app without /ready
            body = exc.read().decode(errors="replace")
            if '"failed"' in body:
                raise RuntimeError(f"backend failed to start: {body}") from None
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base_url}/ready did not turn 200 in time")
        time.sleep(0.01)
