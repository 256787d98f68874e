"""Connection limits uvicorn lacks: a deadline for request headers, and a cap on open connections
that answers 503 before the process runs out of file descriptors.

h11 (uvicorn's HTTP/1.1 parser) waits for headers as long as a client cares to trickle them, and
uvicorn arms no timer on a new connection, so a client that opens connections and sends a header
line now and then (slowloris) holds a descriptor each; enough of them reach the open-file limit
and the server accepts no one (EMFILE). uvicorn's `limit_concurrency` cannot help: it answers
503 only once a request's headers are complete, which a slowloris never sends.
`GuardedH11Protocol` is uvicorn's own h11 protocol with both limits added; `protocol_class(guard)`
makes the class uvicorn's `Config(http=...)` takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from capplan.settings import ServerSettings

# Descriptors kept back for the process itself (model files, pipes, the event loop, log files, a
# redis pool) when the connection cap is derived from the open-file limit.
FD_RESERVE = 64
MAX_BACKLOG = 2048  # uvicorn's default
ABORT_EXTENSION = "capplan.abort"  # scope["extensions"] key: abort this request's connection


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def connection_budget(
    max_connections: int | None, open_files: int | None = None
) -> tuple[int, int]:
    """(connections, listen backlog) that fit the open-file limit with FD_RESERVE to spare.

    asyncio accepts up to `backlog` connections in one go before any of them reaches the
    protocol that would refuse it, so the cap alone is not enough: cap + backlog + reserve must
    stay under the limit, or a burst still ends in EMFILE (where asyncio logs every failed
    accept and stops listening for a second)."""
    usable = (open_file_limit() if open_files is None else open_files) - FD_RESERVE
    if max_connections is None:
        backlog = max(8, min(MAX_BACKLOG, usable // 4))
        return max(1, usable - backlog), backlog
    return max_connections, max(8, min(MAX_BACKLOG, usable - max_connections))


@dataclass
class ConnectionGuard:
    """The limits and what they observed; `on_refused(reason)` counts a refusal."""

    max_connections: int
    header_timeout_s: float
    backlog: int = MAX_BACKLOG
    on_refused: Callable[[str], None] = field(default=lambda reason: None)
    open: int = 0  # connections open now (as of the last one made or lost)

    @classmethod
    def from_settings(
        cls, settings: ServerSettings, on_refused: Callable[[str], None] | None = None
    ) -> ConnectionGuard:
        limit, backlog = connection_budget(settings.max_connections)
        guard = cls(limit, settings.header_timeout_s, backlog)
        if on_refused is not None:
            guard.on_refused = on_refused
        return guard


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap."""

    guard: ConnectionGuard  # set on the subclass protocol_class() makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.open = len(self.connections)
        if len(self.connections) > self.guard.max_connections:
            self.guard.on_refused("too_many_connections")
            self._refuse()
            return
        self._arm_header_timer()

    def _refuse(self) -> None:
        """Answer 503 and free the descriptor at once (a flood of refused connections must not
        hold any). The request already received is read first: closing a socket with unread
        data sends a reset, which can overtake the 503."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # BlockingIOError: nothing arrived yet
                os.read(sock.fileno(), 65536)
        message = (
            f"server at its limit of {self.guard.max_connections} open connections "
            "(--max-connections); retry shortly"
        )
        self._answer_and_abort(503, "Service Unavailable", message, "server_overloaded")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)
        self.guard.open = len(self.connections)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:
            # A request's headers are complete. Its body is the app's to time (--body-timeout).
            self._disarm_header_timer()
            scope: dict[str, Any] = self.cycle.scope  # type: ignore[assignment]
            scope.setdefault("extensions", {})[ABORT_EXTENSION] = self._abort_request

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers are due within the timeout too (uvicorn's keep-alive timer
        # stops at the first byte, so it alone would let a slow header run on forever).
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()

    # --- the header deadline ----------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(
            self.guard.header_timeout_s, self._header_timed_out
        )

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        pending, _ = self.conn.trailing_data
        if not pending:  # nothing of a request yet: an idle connection, closed quietly
            self.transport.close()
            return
        self.guard.on_refused("header_timeout")
        message = f"request headers not received within {self.guard.header_timeout_s:g} s"
        self._answer_and_abort(408, "Request Timeout", message, "timeout")

    def send_400_response(self, msg: str) -> None:
        # h11 could not parse the request (or its headers passed h11's 16 KiB): uvicorn's own
        # answer is plain text and counted nowhere.
        self.guard.on_refused("invalid_http")
        self._answer_and_abort(400, "Bad Request", msg, "invalid_request_error")

    # --- answers outside any request --------------------------------------------------------

    def _answer_and_abort(self, status: int, phrase: str, message: str, type_: str) -> None:
        """Write a complete JSON error answer and drop the connection. Written raw: h11 has no
        request to answer yet. `abort`, not `close`: the descriptor is freed now, and the kernel
        still delivers the few bytes written if the peer reads them."""
        body = json.dumps(
            {"error": {"message": message, "type": type_, "param": None, "code": status}}
        ).encode()
        head = (
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
        )
        if status == 503:
            head += "retry-after: 1\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)
        self.transport.abort()

    def _abort_request(self) -> None:
        """The app gives up on a response it cannot finish (its client stopped reading): drop
        the connection. Marked disconnected first, so uvicorn does not report the unfinished
        response as an application error."""
        if self.cycle is not None:
            self.cycle.disconnected = True
        self.transport.abort()


def protocol_class(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A GuardedH11Protocol class bound to `guard` (uvicorn instantiates it per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
