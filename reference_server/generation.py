"""One admitted request's generation: its slot, its deadline, its metrics.

`GenerationRun` pulls events from the backend under the request timeout, turns any out-of-memory
(CUDA, host or emulated) into a 503 and a timeout into a 504, and on `close()` frees the slot
first (so a dropped client can never keep `running` up) and then stops the backend's iterator.
`cut()` ends it early with a given error (the drain's deadline passed): the answer, or the SSE
stream, ends with that error at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from reference_server.admission import AdmissionGate
from reference_server.backend import Finished, GenerationEvent, TokenDelta
from reference_server.metrics import ServerMetrics
from reference_server.vram import free_cache, is_out_of_memory

# After its deadline (or a cut), a stream has this long to write its last events; a client that
# reads nothing by then has its connection aborted (it holds the slot until then).
WRITE_GRACE_S = 2.0


class ApiError(Exception):
    """An answer other than success: status, OpenAI-style error type, and the outcome counted."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.type_ = type_
        self.param = param
        self.retry_after_s = retry_after_s


class GenerationRun:
    def __init__(
        self,
        *,
        events: AsyncIterator[GenerationEvent],
        gate: AdmissionGate,
        metrics: ServerMetrics,
        cuda: Any,
        arrival: float,
        admitted: float,
        timeout_s: float,
        outcomes: dict[str, int],
        live: set[GenerationRun] | None = None,
        kv_tokens: int = 0,
    ) -> None:
        self._events = events
        self._gate = gate
        self._metrics = metrics
        self._cuda = cuda
        self._outcomes = outcomes
        self.kv_tokens = kv_tokens  # KV tokens the gate reserved for it, freed with its slot
        self.arrival = arrival
        self.admitted = admitted
        self.deadline = admitted + timeout_s
        self.timeout_s = timeout_s
        self.first_token_at: float | None = None
        self.completion_tokens = 0
        self.finished: Finished | None = None
        self.first_text = ""  # text of the event `prime()` pulled
        self._closed = False
        self._live = live if live is not None else set()
        self._live.add(self)
        self._cut: ApiError | None = None
        self._waiting: anyio.CancelScope | None = None  # around the wait for the backend
        self.write_scope: anyio.CancelScope | None = None  # around a streamed answer's writes

    async def prime(self) -> None:
        """Pull the first event, so failures before the first token get their own status."""
        event = await self.next_event()
        if isinstance(event, TokenDelta):
            self.first_text = event.text

    async def next_event(self) -> GenerationEvent | None:
        """The next event, or None after Finished. Raises ApiError on timeout, OOM or a cut."""
        if self.finished is not None:
            return None
        if self._cut is not None:
            raise self._cut
        remaining = self.deadline - time.monotonic()
        # (A scope entered past its deadline may never fire: time is up already.)
        event = await self._wait_for_event(remaining) if remaining > 0 else None
        if event is None:  # the deadline passed, or cut() ended the wait
            if self._cut is not None:
                raise self._cut
            raise ApiError(
                504,
                f"request timed out after {self.timeout_s:g} s; generation stopped",
                reason="timeout",
                type_="timeout",
            )
        now = time.monotonic()
        if isinstance(event, TokenDelta):
            if self.first_token_at is None and event.n_tokens > 0:
                self.first_token_at = now
                self._metrics.ttft.labels(self._metrics.model_name).observe(now - self.arrival)
            self.completion_tokens += event.n_tokens
        else:
            self.finished = event
        return event

    async def _wait_for_event(self, remaining_s: float) -> GenerationEvent | None:
        """The backend's next event, or None when `remaining_s` passed or cut() came first.
        A cancel scope rather than wait_for: cut() can end it early, and no task is made per
        token. Cancelling stops the backend's step: its generation has stopped."""
        event: GenerationEvent | None = None
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + remaining_s) as waiting:
                self._waiting = waiting
                event = await self._events.__anext__()
        except StopAsyncIteration:
            raise ApiError(
                500, "backend ended without finishing", reason="error", type_="server_error"
            ) from None
        except Exception as exc:
            if is_out_of_memory(exc):
                free_cache(self._cuda, exc)
                raise ApiError(
                    503,
                    f"out of memory during generation: {exc}",
                    reason="out_of_memory",
                    type_="server_overloaded",
                    retry_after_s=self._gate.retry_after_s(),
                ) from None
            raise
        finally:
            self._waiting = None
        return event

    def cut(self, error: ApiError) -> None:
        """End this run with `error`: its next (or current) wait for an event raises it, and a
        stream stuck writing to a client that stopped reading is aborted after WRITE_GRACE_S."""
        if self._closed:
            return
        self._cut = error
        if self._waiting is not None:
            self._waiting.cancel()
        if self.write_scope is not None:
            # The loop's clock is anyio's on asyncio; anyio.current_time() needs a task, and
            # the drain calls this from a timer.
            now = asyncio.get_running_loop().time()
            self.write_scope.deadline = min(self.write_scope.deadline, now + WRITE_GRACE_S)

    def write_deadline(self) -> float:
        """When a streamed answer must be written by, on anyio's clock."""
        return anyio.current_time() + (self.deadline - time.monotonic()) + WRITE_GRACE_S

    async def close(self, outcome: str) -> None:
        """Free the slot, record the outcome, stop the backend. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._live.discard(self)
        now = time.monotonic()
        self._gate.release(held_s=now - self.admitted, kv_tokens=self.kv_tokens)
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        m, name = self._metrics, self._metrics.model_name
        generated = self.completion_tokens
        if outcome == "ok" and self.finished is not None:
            # Finished counts tokens whose text a stop string held back and never sent.
            generated = max(generated, self.finished.completion_tokens)
            m.e2e.labels(name).observe(now - self.arrival)
            m.inference_time.labels(name).observe(now - self.admitted)
            if self.first_token_at is not None and generated > 1:
                tpot = (now - self.first_token_at) / (generated - 1)
                m.tpot.labels(name).observe(tpot)
            m.success.labels(name, self.finished.finish_reason).inc()
            m.request_prompt_tokens.labels(name).observe(self.finished.prompt_tokens)
            m.request_generation_tokens.labels(name).observe(self.finished.completion_tokens)
        elif outcome != "ok":
            m.reject(outcome)
        m.generation_tokens.labels(name).inc(generated)
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            # Shielded: we may be running inside a cancelled scope (the client went away).
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await aclose()
