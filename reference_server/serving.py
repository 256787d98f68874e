"""uvicorn as this server runs it, in every launch (uvicorn, gunicorn workers, tests): the guarded
h11 protocol, proxy headers trusted only from `--forwarded-allow-ips`, and a SIGTERM drain that
cuts what is left at `--drain-timeout` with an error each client can read.

uvicorn itself trusts X-Forwarded-For from 127.0.0.1 by default, so any local client (or a local
proxy's clients) could choose the address the rate limit keys on; here nobody is trusted unless
named. On SIGTERM uvicorn waits for in-flight requests, then cancels them silently and exits 0;
here the drain cuts them first, so each stream ends with an SSE error event, and the process
exits with DRAIN_INCOMPLETE_EXIT to say the drain did not finish.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import socket
from types import FrameType
from typing import Any

import uvicorn

from capplan.settings import ServerSettings
from reference_server.connections import ConnectionGuard, protocol_class
from reference_server.generation import WRITE_GRACE_S

log = logging.getLogger("reference_server")
# Exit status when requests were still running at --drain-timeout: sysexits EX_TEMPFAIL (not
# 3 or 4, which a gunicorn worker exits with when it cannot boot or load the app).
DRAIN_INCOMPLETE_EXIT = 75
# Under gunicorn: one shared byte, mapped by the master before it forks its workers; a worker
# that cut requests sets it, so the master's own exit status can say so too.
_drain_cut_flag: mmap.mmap | None = None
# uvicorn's own deadline for the drain, past ours: cut streams get time to write their error.
_SHUTDOWN_GRACE_S = WRITE_GRACE_S + 3.0


def _state(app: Any) -> Any:
    """The app's ServerState (reference_server.server_state), or None for another ASGI app."""
    return getattr(getattr(app, "state", None), "server", None)


def configure(config: uvicorn.Config, app: Any) -> None:
    """Apply this server's connection limits and proxy trust to a uvicorn Config for `app`."""
    state = _state(app)
    settings: ServerSettings = state.config if state is not None else ServerSettings()
    guard = state.connections if state is not None else ConnectionGuard.from_settings(settings)
    config.http = protocol_class(guard)
    config.backlog = guard.backlog  # part of the open-file budget (connections.py)
    config.proxy_headers = bool(settings.forwarded_allow_ips)
    config.forwarded_allow_ips = settings.forwarded_allow_ips or ""


def shutdown_timeout_s(settings: ServerSettings) -> int:
    """uvicorn's graceful-shutdown limit (and gunicorn's graceful_timeout): the drain's own
    deadline plus the time a cut stream needs to write its last events."""
    return max(1, round(settings.drain_timeout_s + _SHUTDOWN_GRACE_S))


def uvicorn_config(app: Any, **options: Any) -> uvicorn.Config:
    """A uvicorn Config for `app` with this server's limits (`options` go to uvicorn)."""
    config = uvicorn.Config(app, **options)
    configure(config, app)
    return config


class DrainingServer(uvicorn.Server):
    """uvicorn's Server whose SIGTERM (or SIGINT) starts the app's drain: /ready answers 503 at
    once, and whatever is still in flight at --drain-timeout is cut with an error."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = _state(self.config.app)
        if state is not None and not self.should_exit and self._loop is not None:
            state.draining = True  # /ready answers 503 while in-flight requests finish
            # A signal handler: hand the timer to the loop, which it also wakes.
            self._loop.call_soon_threadsafe(state.begin_drain)
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutdown; the exit status says how the drain went.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()

    def drain_incomplete(self) -> int:
        """Requests the drain cut (0: it finished in time)."""
        state = _state(self.config.app)
        return int(state.drain_cut) if state is not None else 0


def share_drain_flag() -> None:
    """In the gunicorn master, before the workers fork: the byte they report a cut drain in."""
    global _drain_cut_flag
    _drain_cut_flag = mmap.mmap(-1, 1)  # anonymous and shared: forked workers see the same byte


def report_drain_cut() -> None:
    """In a worker whose drain cut requests."""
    if _drain_cut_flag is not None:
        _drain_cut_flag[0] = 1


def drain_was_cut() -> bool:
    """In the master, after its workers exited: did any of them cut requests?"""
    return _drain_cut_flag is not None and _drain_cut_flag[0] == 1
