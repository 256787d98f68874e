"""The concurrency gate with a bounded FIFO wait queue.

At most `max_concurrent` requests hold a slot; up to `queue_size` more wait, first come first
served, each at most `queue_timeout_s`. Anything beyond is refused at once with a Retry-After
estimated from recent service times, so a client backs off for about as long as the queue needs
to drain instead of hammering the server.

With a KV pool (`set_kv_pool`, a backend that allocates its KV cache at start) a slot also needs
the blocks for the request's prompt + max_tokens: the gate counts the blocks it has handed out,
and a request whose blocks are not free waits in the same queue (no overtaking), so the backend
never runs out of KV and the wait is bounded by the same queue size and timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from reference_server.backend import KvPoolInfo


class Rejected(Exception):
    """A request the gate will not run. `status` and `retry_after_s` go into the answer."""

    reason = "rejected"
    status = 503

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(Rejected):
    reason = "queue_full"


class QueueTimeout(Rejected):
    reason = "queue_timeout"


class Draining(Rejected):
    reason = "draining"


class DrainTimeout(Rejected):
    reason = "drain_timeout"


@dataclass
class GateStats:
    running: int
    queued: int
    max_concurrent: int
    queue_size: int
    queue_timeout_s: float


class AdmissionGate:
    """Slots and a wait queue on one event loop. `acquire()` returns the seconds spent waiting;
    every successful `acquire()` must be paired with one `release()`."""

    def __init__(
        self,
        max_concurrent: int,
        queue_size: int,
        queue_timeout_s: float,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.on_change = on_change  # called with (running, queued) after every change
        self.max_concurrent = max_concurrent
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._service_s = 1.0  # moving average of slot hold time, seeds Retry-After
        self.draining = False
        self.kv_pool: KvPoolInfo | None = None
        self.kv_blocks_reserved = 0  # blocks of the KV pool held by admitted requests
        self._blocks: dict[asyncio.Future[None], int] = {}  # each waiter's blocks

    def set_kv_pool(self, pool: KvPoolInfo | None) -> None:
        """Count KV blocks from now on (the backend's pool is known once it started)."""
        self.kv_pool = pool

    def _cost(self, kv_tokens: int) -> int:
        return self.kv_pool.blocks_for(kv_tokens) if self.kv_pool is not None and kv_tokens else 0

    def _fits(self, blocks: int) -> bool:
        if self.running >= self.max_concurrent:
            return False
        pool = self.kv_pool
        return pool is None or self.kv_blocks_reserved + blocks <= pool.num_blocks

    def _take(self, blocks: int) -> None:
        self.running += 1
        self.kv_blocks_reserved += blocks

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def stats(self) -> GateStats:
        return GateStats(
            self.running, self.queued, self.max_concurrent, self.queue_size, self.queue_timeout_s
        )

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free for a newcomer: the queue ahead drains at
        `max_concurrent` per service time."""
        ahead = self.queued + 1
        estimate = self._service_s * ahead / self.max_concurrent
        return max(1, min(120, math.ceil(estimate)))

    async def acquire(self, kv_tokens: int = 0) -> float:
        """Wait for a slot (and, with a KV pool, the blocks of `kv_tokens` tokens); returns the
        seconds waited. Pair it with one `release(..., kv_tokens=)` of the same tokens."""
        if self.draining:
            raise Draining("server is shutting down", retry_after_s=self.retry_after_s())
        blocks = self._cost(kv_tokens)
        if not self._waiters and self._fits(blocks):
            self._take(blocks)
            self._changed()
            return 0.0
        if len(self._waiters) >= self.queue_size:
            raise QueueFull(
                f"server busy: {self.running} running, {self.queued} queued (queue full)",
                retry_after_s=self.retry_after_s(),
            )
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        self._blocks[waiter] = blocks
        self._changed()
        # A timer rather than asyncio.wait_for: before Python 3.12, wait_for swallows a cancel
        # that lands just as the slot is handed over (gh-86296), and a client that left would
        # then hold the slot until its generation ended.
        expiry = loop.call_later(self.queue_timeout_s, self._expire, waiter)
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # The slot was handed over just as we gave up: pass it on.
                self.release(kv_tokens=kv_tokens)
            else:
                waiter.cancel()
                self._remove(waiter)
                self._grant()  # the head may have been blocking smaller requests behind it
                self._changed()
            raise
        finally:
            expiry.cancel()
            self._blocks.pop(waiter, None)
        self._changed()
        return time.monotonic() - start

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        """The queue timeout: refuse a waiter still without a slot."""
        if waiter.done():
            return
        self._remove(waiter)
        waiter.set_exception(
            QueueTimeout(
                f"waited {self.queue_timeout_s:g} s in the queue without a free slot",
                retry_after_s=self.retry_after_s(),
            )
        )
        self._grant()  # the head may have been blocking smaller requests behind it
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.running, len(self._waiters))

    def _remove(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def release(self, held_s: float | None = None, kv_tokens: int = 0) -> None:
        """Free a slot and its KV blocks, handing them straight to the oldest waiters that fit."""
        if held_s is not None:
            self._service_s = 0.8 * self._service_s + 0.2 * max(held_s, 0.001)
        self.running -= 1
        self.kv_blocks_reserved -= self._cost(kv_tokens)
        self._grant()
        self._changed()

    def refuse_waiters(self, message: str) -> int:
        """Refuse everyone in the queue (the drain ran out of time); returns how many waited."""
        refused = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(DrainTimeout(message, retry_after_s=self.retry_after_s()))
                refused += 1
        self._changed()
        return refused

    def _grant(self) -> None:
        """Admit waiters from the head of the queue while their slot and blocks are free."""
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            blocks = self._blocks.get(waiter, 0)
            if not self._fits(blocks):
                return
            self._waiters.popleft()
            self._take(blocks)
            waiter.set_result(None)


class OpenGate(AdmissionGate):
    """Admits everything at once and counts nothing: the baseline the gate's cost is measured
    against. Never used to serve."""

    async def acquire(self, kv_tokens: int = 0) -> float:
        return 0.0

    def release(self, held_s: float | None = None, kv_tokens: int = 0) -> None:
        return None
