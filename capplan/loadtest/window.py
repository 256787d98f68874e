"""A step's window: which requests are warmup, when the step may end, and its extension.

A step ends when its planned part is over (its duration has passed, or its `--requests` were
sent) *and* at least `min_requests` requests started after the warmup have completed, ok or
failed. Until then the step goes on sending, each such request flagged `extension` in its
record, but never later than one request timeout after the planned end: a request still
unanswered by then would have timed out anyway. On an LLM whose answers take longer than the
step, this is what turns "every request fell in the warmup" into a measurement.

Every engine drives one `StepWindow` per step (per process for Locust), from one thread of
coroutines or greenlets, so no locking.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowPlan:
    """What a step's window is made of; the same fields in every engine's job."""

    duration_s: float | None = None
    warmup_s: float = 0.0
    warmup_requests: int = 0  # per user (closed loop), or the step's first arrivals (open loop)
    min_requests: int = 0  # requests started after the warmup that must complete
    timeout_s: float = 120.0  # the extension ends this long after the planned end


class StepWindow:
    """One step's window, from its start; engines ask it before every send."""

    def __init__(self, plan: WindowPlan, start: float) -> None:
        self.plan = plan
        self.start = start
        self.done = 0  # measured (non-warmup) requests completed
        self.in_flight = 0  # measured requests sent, not yet completed
        self.planned_end: float | None = None  # set when the planned part is over

    def is_warmup(self, sent_before: int, at: float) -> bool:
        """Whether a request started at `at` is warmup, its user (or the schedule, in an open
        loop) having sent `sent_before` requests of this step before it."""
        return sent_before < self.plan.warmup_requests or at < self.start + self.plan.warmup_s

    def planned(self, now: float) -> bool:
        """The planned part is on: its duration has not passed and nothing closed it."""
        if self.planned_end is not None:
            return False
        duration = self.plan.duration_s
        return duration is None or now < self.start + duration

    def close_planned(self, now: float) -> None:
        """The planned part is over: its duration passed, or its last planned request went."""
        if self.planned_end is None:
            duration = self.plan.duration_s
            self.planned_end = now if duration is None else min(now, self.start + duration)

    def extend(self, now: float) -> bool:
        """After the planned part: whether one more request must start to reach the minimum."""
        self.close_planned(now)
        assert self.planned_end is not None
        if now >= self.planned_end + self.plan.timeout_s:
            return False
        return self.done + self.in_flight < self.plan.min_requests

    def next_request(
        self, now: float, planned: Iterator[int], extra: Iterator[int]
    ) -> tuple[int, bool] | None:
        """(index, extension) of a closed-loop user's next request; None: the step is over.

        `planned` yields the planned request indices (endless for a duration-bound step),
        `extra` the ones an extension may use.
        """
        if self.planned(now):
            index = next(planned, None)
            if index is not None:
                return index, False
        if self.extend(now):
            return next(extra), True
        return None

    def resend(self, now: float) -> bool | None:
        """Whether a refused request may be resent now: as an extension (True), within the
        planned part (False), or not at all (None)."""
        if self.planned(now):
            return False
        return True if self.extend(now) else None

    def remaining_s(self, now: float) -> float | None:
        """How long a user may still wait to send (its backoff ends there); None: unbounded."""
        if self.planned(now):
            duration = self.plan.duration_s
            return None if duration is None else self.start + duration - now
        self.close_planned(now)
        assert self.planned_end is not None
        if self.done + self.in_flight >= self.plan.min_requests:
            return 0.0
        return max(0.0, self.planned_end + self.plan.timeout_s - now)

    def sent(self, warmup: bool) -> None:
        if not warmup:
            self.in_flight += 1

    def finished(self, warmup: bool) -> None:
        if not warmup:
            self.in_flight -= 1
            self.done += 1
