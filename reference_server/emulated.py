"""A backend with no model: tokens on a schedule that behaves like a named GPU+model.

Timing comes either from exact overrides (`ttft_ms`, `tpot_ms`: the contract for tests) or from
the estimator's roofline (`capplan.estimate.service_timing`): prefill time per prompt token, and a
decode step whose cost grows with the KV tokens the whole batch holds (the batch effect). Every
token is scheduled on an absolute deadline from the request's start, so a loaded event loop makes
tokens late but never makes the schedule drift.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from reference_server.backend import (
    BackendInfo,
    BackendOutOfMemory,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TokenDelta,
)

# One word per token, each with a leading space, so any whitespace token counter agrees with
# the exact count the backend reports.
_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)  # fmt: skip
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_VOCAB = 32_000
DEFAULT_MAX_CONTEXT = 32_768


@dataclass(frozen=True)
class EmulatedTiming:
    """Where the schedule comes from. Overrides win over the roofline, field by field."""

    ttft_ms: float | None = None  # time to first token, fixed
    tpot_ms: float | None = None  # time per output token after the first, fixed
    prefill_ms_per_token: float = 0.0
    decode_step_base_ms: float = 0.0
    decode_step_ms_per_kv_token: float = 0.0
    decode_compute_ms_per_sequence: float = 0.0  # matmul floor each running sequence adds
    floor_ms: float = 0.0  # the emulated runtime's floor per forward pass
    host_ms_per_sequence: float = 0.0  # host work each running sequence adds to a step
    overhead_ms: float = 0.0  # per request before its first token
    kv_bytes_per_token: int = 0
    kv_budget_bytes: int | None = None  # None: no KV limit (no emulated OOM)
    max_context: int = DEFAULT_MAX_CONTEXT
    source: str = "overrides"

    def first_token_ms(self, prompt_tokens: int, batch_kv_tokens: int, batch: int = 1) -> float:
        if self.ttft_ms is not None:
            return self.ttft_ms
        # Prefill is never faster than one read of the weights (ServiceTiming.prefill_ms).
        return self.overhead_ms + max(
            self.prefill_ms_per_token * prompt_tokens, self.decode_step_ms(batch_kv_tokens, batch)
        )

    def prefill_ms(self, prompt_tokens: int) -> float:
        """One prompt's prefill, alone (ServiceTiming.prefill_ms)."""
        if self.ttft_ms is not None:
            return self.ttft_ms
        return max(self.prefill_ms_per_token * prompt_tokens, self.decode_step_ms(0))

    def decode_step_ms(self, batch_kv_tokens: int, batch: int = 1) -> float:
        """One decode step (ServiceTiming.decode_step_ms): the largest of the weights and the
        batch's KV read, the batch's matmuls and the runtime's floor."""
        if self.tpot_ms is not None:
            return self.tpot_ms
        memory = self.decode_step_base_ms + self.decode_step_ms_per_kv_token * batch_kv_tokens
        host = self.floor_ms + batch * self.host_ms_per_sequence
        return max(host, memory, batch * self.decode_compute_ms_per_sequence)


def timing_from_catalog(
    gpu: str,
    model: str,
    *,
    quant: str | None = None,
    kv_dtype: str | None = None,
    ttft_ms: float | None = None,
    tpot_ms: float | None = None,
    calibration: str | None = None,
) -> EmulatedTiming:
    """The estimator's step model of `gpu` + `model` (calibrated with `calibration`, a profile
    file from `capplan calibrate`), with optional exact overrides.

    The KV budget is the card's own limit (the estimator's hf budget with no safety margin), so
    the emulated out-of-memory comes where `capplan estimate` puts the absolute ceiling."""
    from capplan.estimate.calibration import read_profile
    from capplan.estimate.service_timing import service_timing

    profile = read_profile(calibration) if calibration else None
    st = service_timing(gpu, model, quant=quant, kv_dtype=kv_dtype, calibration=profile)
    return EmulatedTiming(
        ttft_ms=ttft_ms,
        tpot_ms=tpot_ms,
        prefill_ms_per_token=st.prefill_ms_per_token,
        decode_step_base_ms=st.decode_step_base_ms,
        decode_step_ms_per_kv_token=st.decode_step_ms_per_kv_token,
        decode_compute_ms_per_sequence=st.decode_compute_ms_per_sequence,
        floor_ms=st.floor_ms,
        host_ms_per_sequence=st.host_ms_per_sequence,
        overhead_ms=st.overhead_ms,
        kv_bytes_per_token=int(st.kv_bytes_per_token),
        kv_budget_bytes=int(st.kv_budget_bytes),
        max_context=int(st.max_context),
        source=f"{'calibrated' if st.calibrated else 'roofline'}:{gpu}/{model}",
    )


class EmulatedBackend:
    """Implements `reference_server.backend.Backend` without a model.

    `hold()` / `release()` are a test hook (thread-safe): while held, every generation waits
    before its first token, so a test can pin requests in their slots without sleeping.
    """

    def __init__(
        self,
        timing: EmulatedTiming | None = None,
        *,
        model_id: str = "emulated",
        gpu: str = "none",
        tokens_per_chunk: int = 1,
    ) -> None:
        self.timing = timing or EmulatedTiming(ttft_ms=0.0, tpot_ms=0.0)
        self.tokens_per_chunk = max(1, tokens_per_chunk)
        self.info = BackendInfo(
            name="emulated",
            model_id=model_id,
            device=f"emulated:{gpu}",
            max_context=self.timing.max_context,
            emulated=True,
            details={
                "timing_source": self.timing.source,
                "ttft_ms": self.timing.ttft_ms,
                "tpot_ms": self.timing.tpot_ms,
                "tokens_per_chunk": self.tokens_per_chunk,
                "kv_budget_bytes": self.timing.kv_budget_bytes,
                "kv_tokens_fitting": kv_tokens_fitting(self.timing),
            },
        )
        self._kv_tokens: dict[int, int] = {}  # live generation -> KV tokens it holds
        self._reserved_tokens = 0
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._held = False
        self._lock = threading.Lock()
        self.started_generations = 0  # generations that got past admission into the backend

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        if not self._held:
            self._release.set()

    # --- test hook -------------------------------------------------------------------------

    def hold(self) -> None:
        """Make every generation wait before its first token until `release()`."""
        with self._lock:
            self._held = True
            if self._loop is not None and self._release is not None:
                self._loop.call_soon_threadsafe(self._release.clear)

    def release(self) -> None:
        with self._lock:
            self._held = False
            if self._loop is not None and self._release is not None:
                self._loop.call_soon_threadsafe(self._release.set)

    # --- tokenizer -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(piece.encode()) % _VOCAB for piece in _TOKEN_RE.findall(text)]

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        ids: list[int] = []
        for message in messages:
            ids.append(1)  # role marker, like <|im_start|>
            ids.extend(self.encode(message.get("role", "")))
            ids.extend(self.encode(message.get("content", "")))
            ids.append(2)  # <|im_end|>
        ids.extend([1, *self.encode("assistant")])
        return ids

    # --- generation ------------------------------------------------------------------------

    def _batch_kv_tokens(self) -> int:
        return sum(self._kv_tokens.values())

    def _reserve(self, tokens: int) -> None:
        """Reserve KV for the request's whole length up front, like a paged allocator would."""
        budget = self.timing.kv_budget_bytes
        per_token = self.timing.kv_bytes_per_token
        if budget is not None and per_token > 0:
            needed = (self._reserved_tokens + tokens) * per_token
            if needed > budget:
                raise BackendOutOfMemory(
                    f"emulated KV cache full: {needed} bytes needed, budget {budget} bytes"
                )
        self._reserved_tokens += tokens

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        prompt_tokens = len(request.prompt_ids)
        max_tokens = max(0, request.max_tokens)
        self._reserve(prompt_tokens + max_tokens)
        gen_id = self._next_id
        self._next_id += 1
        self._kv_tokens[gen_id] = prompt_tokens
        self.started_generations += 1
        seed = request.seed if request.seed is not None else zlib.crc32(request.request_id.encode())
        try:
            if self._release is not None and not self._release.is_set():
                await self._release.wait()
            start = loop.time()
            batch_kv, batch = self._batch_kv_tokens(), len(self._kv_tokens)
            deadline = start + self.timing.first_token_ms(prompt_tokens, batch_kv, batch) / 1000.0
            emitted = 0
            pending: list[str] = []
            text = ""  # all generated text, kept only when stop sequences need it
            flushed = 0  # characters of `text` already sent
            while emitted < max_tokens:
                delay = deadline - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                word = " " + _WORDS[(seed + emitted) % len(_WORDS)]
                pending.append(word)
                emitted += 1
                if request.stop:
                    text += word
                    cut = _first_stop(text, request.stop)
                    if cut is not None:
                        if cut > flushed:
                            yield TokenDelta(text=text[flushed:cut], n_tokens=len(pending))
                        yield Finished("stop", prompt_tokens, emitted)
                        return
                self._kv_tokens[gen_id] = prompt_tokens + emitted
                step_ms = self.timing.decode_step_ms(self._batch_kv_tokens(), len(self._kv_tokens))
                deadline += step_ms / 1000.0
                # Chunks are always `tokens_per_chunk` tokens (the last may be shorter), even when
                # a late loop sends them back to back: tests count chunks.
                if emitted == max_tokens or len(pending) >= self.tokens_per_chunk:
                    chunk = "".join(pending)
                    flushed += len(chunk)
                    yield TokenDelta(text=chunk, n_tokens=len(pending))
                    pending = []
            yield Finished(
                finish_reason="length", prompt_tokens=prompt_tokens, completion_tokens=emitted
            )
        finally:
            self._kv_tokens.pop(gen_id, None)
            self._reserved_tokens -= prompt_tokens + max_tokens

    def memory_stats(self) -> dict[str, Any]:
        per_token = self.timing.kv_bytes_per_token
        budget = self.timing.kv_budget_bytes
        return {
            "kind": "emulated_kv",
            "kv_tokens_in_use": self._batch_kv_tokens(),
            "kv_tokens_reserved": self._reserved_tokens,
            "used_bytes": self._reserved_tokens * per_token,
            "total_bytes": budget,
            "fraction": (self._reserved_tokens * per_token / budget) if budget else None,
        }

    async def close(self) -> None:
        self.release()


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop sequence starts in `text`, if any does."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def kv_tokens_fitting(timing: EmulatedTiming) -> int | None:
    """How many KV tokens the emulated budget holds (None when unlimited)."""
    if timing.kv_budget_bytes is None or timing.kv_bytes_per_token <= 0:
        return None
    return math.floor(timing.kv_budget_bytes / timing.kv_bytes_per_token)
