"""A closed-loop user's decisions, the same in every engine: what it sends next, what the
answer makes of it, and how long it then waits. Engines only send and sleep.

A user sends its next request when its previous one is answered, while the step's window
(`capplan.loadtest.window`) lets it; after a 429 or 503 it waits and resends that request
(`capplan.loadtest.backoff`) unless the run was asked not to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from capplan.loadtest.backoff import Backoff
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.window import StepWindow


@dataclass(frozen=True)
class Send:
    """One send a user decided on."""

    index: int  # the request's number in the step: its prompt and id
    retry: int  # 0, or which resend of a refused request this is
    warmup: bool
    extension: bool  # after the planned end, to reach the window's minimum


class ClosedUser:
    """One user of a closed-loop step; `planned` and `extra` are the step's (or this worker's)
    request indices, shared by its users (`StepWindow.next_request`)."""

    def __init__(
        self,
        window: StepWindow,
        planned: Iterator[int],
        extra: Iterator[int],
        backoff: Backoff | None,
    ) -> None:
        self.window = window
        self.planned = planned
        self.extra = extra
        self.backoff = backoff
        self.sent = 0
        self._resend: tuple[int, int] | None = None  # (index, retry) of a refused request

    def next(self, now: float) -> Send | None:
        """The next send, counted as in flight; None when the window says the step is over."""
        if self._resend is not None:
            (index, retry), extension = self._resend, self.window.resend(now)
            if extension is None:
                return None
        else:
            chosen = self.window.next_request(now, self.planned, self.extra)
            if chosen is None:
                return None
            (index, extension), retry = chosen, 0
        send = Send(index, retry, self.window.is_warmup(self.sent, now), extension)
        self.sent += 1
        self.window.sent(send.warmup)
        return send

    def answered(self, record: RequestRecord, send: Send, now: float) -> float | None:
        """Marks `record` as `send` made it, with the wait its answer costs (`backoff_s`,
        never past the window's end); returns that wait."""
        self.window.finished(send.warmup)
        record.warmup, record.extension, record.retry = send.warmup, send.extension, send.retry
        wait, again = self.backoff.after(record) if self.backoff is not None else (0.0, False)
        remaining = self.window.remaining_s(now)
        if remaining is not None:
            wait = min(wait, remaining)
        record.backoff_s = round(wait, 6) if wait > 0 else None
        self._resend = (send.index, send.retry + 1) if again else None
        return record.backoff_s
