"""When a run stops early: the target is broken, and every further request would say the same.

Two signs, watched per step in the order answers arrive: connection errors in a row (nothing
listens any more), and a step whose first answers all carry the same client error (a prompt
over the model's context, a wrong model name, a bad API key). 408 and 429 are not in it: they
ask the client to come back later. The reason quotes the server's own message.
"""

from __future__ import annotations

from capplan.loadtest.record import RequestRecord
from capplan.loadtest.server_message import server_message

CONNECT_ERRORS_IN_A_ROW = 5
SAME_CLIENT_ERROR_ANSWERS = 5
NOT_BROKEN_4XX = (408, 429)  # "try again later": retried, never a reason to stop


class StopRules:
    """Feed it every record of one step as it finishes; `reason` is set once the target is
    broken."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._connect_errors = 0
        self._first_statuses: list[int] = []

    def observe(self, record: RequestRecord) -> str | None:
        """The stop reason, once there is one (it stays)."""
        if self.reason is not None:
            return self.reason
        if record.error == "connect_error":
            self._connect_errors += 1
            if self._connect_errors >= CONNECT_ERRORS_IN_A_ROW:
                self.reason = (
                    f"{self._connect_errors} connection errors in a row: "
                    f"{server_message(record.error_detail)}"
                )
            return self.reason
        self._connect_errors = 0
        if record.status is not None and len(self._first_statuses) < SAME_CLIENT_ERROR_ANSWERS:
            self._first_statuses.append(record.status)
            first = self._first_statuses[0]
            if (
                len(self._first_statuses) == SAME_CLIENT_ERROR_ANSWERS
                and 400 <= first < 500
                and first not in NOT_BROKEN_4XX
                and all(s == first for s in self._first_statuses)
            ):
                self.reason = (
                    f"the first {SAME_CLIENT_ERROR_ANSWERS} answers were all HTTP {first}: "
                    f"{server_message(record.error_detail)}"
                )
        return self.reason
