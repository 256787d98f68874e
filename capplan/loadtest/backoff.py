"""How a closed-loop user answers a 429 or 503: it waits and retries, as real clients do.

The schedule is openai-python's (`_constants.py` and `_base_client._calculate_retry_timeout`):
at most 2 retries of a request, a numeric Retry-After is waited as given, otherwise an
exponential backoff of 0.5 s, 1 s, 2 s ... up to 8 s, shortened by up to a quarter at random
(jitter). Two departures, both to stay bounded against a server that refuses everything: a
Retry-After is cut at 60 s (the client ignores longer ones), and the backoff grows with the
user's refusals in a row, not the request's, so a user that gave up on one request waits
before its next one too. Open-loop arrivals never retry: their schedule is the point.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from capplan.loadtest.record import RequestRecord

RETRY_STATUSES = (429, 503)  # "slow down" and "overloaded": the answers worth waiting out
MAX_RETRIES = 2  # openai-python DEFAULT_MAX_RETRIES
INITIAL_DELAY_S = 0.5  # openai-python INITIAL_RETRY_DELAY
MAX_DELAY_S = 8.0  # openai-python MAX_RETRY_DELAY
MAX_RETRY_AFTER_S = 60.0  # openai-python waits a Retry-After of (0, 60] s as given
JITTER = 0.25  # the wait is shortened by up to this fraction at random


@dataclass
class Backoff:
    """One closed-loop user's refusals in a row, and what the next one costs it."""

    max_retries: int = MAX_RETRIES
    seed: str = "0"
    refused_in_a_row: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"backoff:{self.seed}")  # seeded: reruns wait alike

    def after(self, record: RequestRecord) -> tuple[float, bool]:
        """(seconds to wait, whether to resend the same request) after `record`'s answer."""
        if record.status not in RETRY_STATUSES:
            self.refused_in_a_row = 0
            return 0.0, False
        self.refused_in_a_row += 1
        retry_after = record.retry_after_s
        if retry_after is not None and retry_after > 0:
            wait = min(retry_after, MAX_RETRY_AFTER_S)
        else:
            wait = min(INITIAL_DELAY_S * 2.0 ** (self.refused_in_a_row - 1), MAX_DELAY_S)
            wait *= 1.0 - JITTER * self._rng.random()
        return wait, record.retry < self.max_retries


def backoff_how(enabled: bool, max_retries: int) -> str:
    """How a closed loop's users answered 429/503, for `load_model_run.how`."""
    if not enabled:
        return ", and at once after a 429/503 (--no-backoff)"
    return (
        f", after a 429/503 waits its Retry-After (at most {MAX_RETRY_AFTER_S:g} s) or a "
        f"backoff of {INITIAL_DELAY_S:g}-{MAX_DELAY_S:g} s and resends it (at most "
        f"{max_retries} times)"
    )
