"""The gate on its own: slots, FIFO hand-over, a bounded queue, timeouts, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from reference_server.admission import AdmissionGate, QueueFull, QueueTimeout


def test_waiter_cancelled_while_queued_leaves_no_trace() -> None:
    async def main() -> None:
        gate = AdmissionGate(max_concurrent=1, queue_size=2, queue_timeout_s=10)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert gate.queued == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (gate.running, gate.queued) == (1, 0)
        gate.release()
        assert gate.running == 0

    asyncio.run(main())


def test_cancel_landing_as_the_slot_is_handed_over_frees_the_slot() -> None:
    # The client leaves in the same loop turn that a release hands its queued request the slot
    # (the race behind a flaky disconnect test): the cancel must win and the slot come back.
    async def main() -> None:
        gate = AdmissionGate(max_concurrent=1, queue_size=2, queue_timeout_s=10)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert gate.queued == 1
        gate.release()  # grants the waiter ...
        waiter.cancel()  # ... which is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (gate.running, gate.queued) == (0, 0)

    asyncio.run(main())


def test_release_hands_the_slot_to_the_oldest_waiter() -> None:
    async def main() -> None:
        gate = AdmissionGate(max_concurrent=1, queue_size=2, queue_timeout_s=10)
        await gate.acquire()
        first = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        second = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await asyncio.wait_for(asyncio.gather(gate.acquire(), asyncio.sleep(0)), timeout=1)
        gate.release()
        await first
        assert not second.done()
        assert (gate.running, gate.queued) == (1, 1)
        gate.release()
        await second
        gate.release()
        assert (gate.running, gate.queued) == (0, 0)

    asyncio.run(main())


def test_queue_timeout_removes_the_waiter() -> None:
    async def main() -> None:
        gate = AdmissionGate(max_concurrent=1, queue_size=1, queue_timeout_s=0.05)
        await gate.acquire()
        with pytest.raises(QueueTimeout) as info:
            await gate.acquire()
        assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1
        assert (gate.running, gate.queued) == (1, 0)

    asyncio.run(main())


def test_retry_after_grows_with_the_queue_ahead() -> None:
    async def main() -> None:
        gate = AdmissionGate(max_concurrent=1, queue_size=10, queue_timeout_s=10)
        await gate.acquire()
        gate.release(held_s=30.0)  # seeds the average service time
        await gate.acquire()
        alone = gate.retry_after_s()
        waiters = [asyncio.create_task(gate.acquire()) for _ in range(5)]
        await asyncio.sleep(0)
        assert gate.queued == 5
        assert gate.retry_after_s() > alone >= 1
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    asyncio.run(main())
