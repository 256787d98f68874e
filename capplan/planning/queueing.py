"""Queueing formulas for the tail: Erlang C (M/M/c) and the Allen-Cunneen M/G/c approximation.

A replica is `c` servers (its concurrency slots); a request holds one slot for its service time
(the end-to-end latency measured at that concurrency). Requests that find every slot busy wait in
the replica's queue, and that wait adds to both TTFT and E2E.

- M/M/c: P(wait) is Erlang C; the wait given waiting is exponential with rate c*mu - lambda, so
  P(W > t) = C * exp(-(c*mu - lambda) * t) exactly.
- M/G/c (Allen-Cunneen): the mean wait scales by (1 + cs2) / 2, cs2 the squared coefficient of
  variation of the service time (0 for a fixed prompt and output length, 1 for exponential). The
  tail keeps the exponential shape with the mean scaled the same way; an approximation, good to
  some 10-20% in the region a capacity plan runs in (utilization 0.5-0.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def erlang_b(servers: int, offered_load: float) -> float:
    """Blocking probability of M/M/c/c, by the stable recursion B(k) = a B(k-1) / (k + a B(k-1))."""
    if servers < 0 or offered_load < 0:
        raise ValueError("servers and offered load must be non-negative")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    return b


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability an arrival waits in M/M/c, offered load a = lambda / mu (Erlangs)."""
    if servers <= 0:
        raise ValueError("need at least one server")
    rho = offered_load / servers
    if rho >= 1.0:
        return 1.0
    b = erlang_b(servers, offered_load)
    return b / (1.0 - rho * (1.0 - b))


@dataclass(frozen=True)
class QueueTail:
    """Waiting time of one replica as an M/G/c queue (seconds)."""

    servers: int
    arrival_rate: float  # requests/s into this replica
    service_time_s: float  # mean time a request holds a slot
    service_cv2: float  # squared coefficient of variation of the service time
    utilization: float
    p_wait: float  # Erlang C
    mean_wait_s: float
    stable: bool

    def wait_quantile_s(self, q: float) -> float:
        """The q-quantile of the wait: 0 while P(wait) <= 1 - q, then the exponential tail."""
        if not self.stable:
            return math.inf
        if self.p_wait <= 1.0 - q or self.p_wait == 0.0:
            return 0.0
        decay = self._decay_rate()
        return math.log(self.p_wait / (1.0 - q)) / decay

    def _decay_rate(self) -> float:
        mu = 1.0 / self.service_time_s
        return (self.servers * mu - self.arrival_rate) * 2.0 / (1.0 + self.service_cv2)


def mgc_tail(
    servers: int, arrival_rate: float, service_time_s: float, service_cv2: float = 1.0
) -> QueueTail:
    """Queue tail of M/G/c (M/M/c exactly when service_cv2 == 1)."""
    if service_time_s <= 0:
        raise ValueError("service time must be positive")
    offered = arrival_rate * service_time_s
    rho = offered / servers
    if rho >= 1.0:
        return QueueTail(
            servers, arrival_rate, service_time_s, service_cv2, rho, 1.0, math.inf, False
        )
    c = erlang_c(servers, offered)
    mean_wait = c / (servers / service_time_s - arrival_rate) * (1.0 + service_cv2) / 2.0
    return QueueTail(servers, arrival_rate, service_time_s, service_cv2, rho, c, mean_wait, True)
