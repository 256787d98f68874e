"""Padded dynamic batching: one thread runs every forward pass; sequences share one KV cache.

Requests that arrive within `batch_wait_ms` of an idle engine start together, left-padded to one
length. While a batch decodes, new sequences join at the next step boundary (their prompts are
prefilled on their own, then their cache rows are left-padded and stacked onto the batch's), and
finished or cancelled ones leave it, so a slot is free again one step after its client goes away.
Each sequence has its own sampling parameters and random generator, so a seeded request gives the
same tokens whatever else shares its batch (up to float rounding).
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from reference_server.backend import BackendOutOfMemory, Finished, FinishReason, TokenDelta
from reference_server.text_stream import TextStream
from reference_server.vram import is_out_of_memory

logger = logging.getLogger(__name__)
_MIN_TEMPERATURE = 1e-5

EngineEvent = TokenDelta | Finished | BaseException
Sink = Callable[[EngineEvent], None]


class EngineClosed(RuntimeError):
    """The engine stopped before this sequence finished."""


@dataclass(eq=False)
class Sequence:
    """One request's state inside the engine. `sink` is called from the engine thread."""

    prompt_ids: list[int]
    max_tokens: int
    sink: Sink
    stream: TextStream
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    reported_prompt_tokens: int | None = None  # when prompt_ids were padded out of an empty prompt
    generated: list[int] = field(default_factory=list)
    unreported_tokens: int = 0
    cancelled: bool = False
    done: bool = False
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed if self.seed is not None else random.getrandbits(63))

    @property
    def next_position(self) -> int:
        """Position id of the last sampled token, the next one fed to the model."""
        return len(self.prompt_ids) + len(self.generated) - 1


@dataclass
class EngineCounters:
    forward_passes: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # sum of batch sizes over decode steps
    peak_batch: int = 0
    out_of_memory: int = 0


class BatchingEngine:
    """Runs a causal LM on its own thread for many concurrent sequences."""

    def __init__(
        self,
        model: Any,
        *,
        device: str,
        eos_token_ids: set[int],
        max_context: int,
        max_batch: int = 8,
        batch_wait_ms: float = 5.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model
        self.device = torch.device(device)
        self.eos_token_ids = eos_token_ids
        self.max_context = max_context
        self.max_batch = max_batch
        self.batch_wait_s = max(batch_wait_ms, 0.0) / 1000.0
        self.counters = EngineCounters()
        self._cond = threading.Condition()
        self._pending: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._can_join = False  # decided after the first prefill, from the cache's layer types
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- caller side (any thread)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capplan-batching", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, sequence: Sequence) -> None:
        with self._cond:
            if self._stopping:
                raise EngineClosed("the generation engine is stopped")
            self._pending.append(sequence)
            self._cond.notify_all()

    def cancel(self, sequence: Sequence) -> None:
        """Stop a sequence; it leaves the batch at the next step boundary."""
        with self._cond:
            sequence.cancelled = True
            self._cond.notify_all()

    @property
    def running(self) -> int:
        """Sequences holding a row of the batch (a finished one lets go at the next step)."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # ---------------------------------------------------------------- engine thread

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                joiners: list[Sequence] = []
                try:
                    self._drop_finished()
                    admitted = self._next_joiners()
                    if admitted is None:
                        break
                    joiners = admitted
                    if joiners:
                        self._prefill(joiners)
                    elif self._active:
                        self._decode_step()
                except Exception as error:  # a broken batch must not kill the engine
                    if not is_out_of_memory(error):  # host or device: MemoryError, "can't allocate"
                        logger.exception("generation step failed")
                        self._fail_all(joiners, error)
                        continue
                    self.counters.out_of_memory += 1
                    # Free the batch's cache before anyone hears of it, so a retry finds room.
                    failed = self._take_all(joiners)
                    error.__traceback__ = None  # its frames hold the failed pass's tensors
                    gc.collect()
                    torch.cuda.empty_cache()  # no-op without an initialised CUDA context
                    reason = f"out of memory in a forward pass ({type(error).__name__})"
                    self._fail(failed, BackendOutOfMemory(reason))
            self._fail_all([], EngineClosed("the generation engine stopped"))
            with self._cond:
                pending, self._pending = list(self._pending), deque()
            self._fail_all(pending, EngineClosed("the generation engine stopped"))

    def _next_joiners(self) -> list[Sequence] | None:
        """Sequences to admit at this step boundary; None when the engine should stop."""
        with self._cond:
            while not self._stopping and not self._active and not self._live_pending():
                self._cond.wait()
            if self._stopping:
                return None
            if not self._active and self.batch_wait_s > 0:
                # Idle engine: give requests that arrive together a moment to share the prefill.
                deadline = time.monotonic() + self.batch_wait_s
                while not self._stopping and len(self._pending) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._active and not self._can_join:
                return []
            joiners: list[Sequence] = []
            while self._pending and len(self._active) + len(joiners) < self.max_batch:
                sequence = self._pending.popleft()
                if not sequence.cancelled:
                    joiners.append(sequence)
            return joiners

    def _live_pending(self) -> bool:
        while self._pending and self._pending[0].cancelled:
            self._pending.popleft()
        return bool(self._pending)

    def _prefill(self, joiners: list[Sequence]) -> None:
        from transformers import DynamicCache

        length = max(len(s.prompt_ids) for s in joiners)
        ids = torch.zeros((len(joiners), length), dtype=torch.long)
        mask = torch.zeros((len(joiners), length), dtype=torch.long)
        for row, sequence in enumerate(joiners):
            n = len(sequence.prompt_ids)
            ids[row, length - n :] = torch.tensor(sequence.prompt_ids)
            mask[row, length - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache)
        self._merge(joiners, cache, mask.to(self.device))
        self.counters.peak_batch = max(self.counters.peak_batch, len(self._active))
        self._accept(joiners, logits)

    def _decode_step(self) -> None:
        batch = self._active
        ids = torch.tensor([[s.generated[-1]] for s in batch], dtype=torch.long)
        positions = torch.tensor([[s.next_position] for s in batch], dtype=torch.long)
        assert self._mask is not None
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(batch), 1))], dim=1)
        logits = self._forward(ids, self._mask, positions, self._cache)
        self.counters.decode_steps += 1
        self.counters.decode_rows += len(batch)
        self.counters.peak_batch = max(self.counters.peak_batch, len(batch))
        self._accept(batch, logits)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        self.counters.forward_passes += 1
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[:, -1, :].float()

    def _merge(self, joiners: list[Sequence], cache: Any, mask: torch.Tensor) -> None:
        """Stack the joiners' fresh cache rows under the running batch's, left-padded."""
        if self._cache is None or not self._active:
            self._cache, self._mask = cache, mask
            self._active = list(joiners)
            self._can_join = _is_plain_dynamic(cache)
            return
        assert self._mask is not None
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        total = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            old_layer.keys = _stack_left_padded(old_layer.keys, new_layer.keys, total)
            old_layer.values = _stack_left_padded(old_layer.values, new_layer.values, total)
        self._mask = torch.cat([_left_pad(self._mask, total), _left_pad(mask, total)], dim=0)
        self._active.extend(joiners)

    def _accept(self, batch: list[Sequence], logits: torch.Tensor) -> None:
        tokens = self._sample(batch, logits)
        for sequence, token in zip(batch, tokens, strict=True):
            self._advance(sequence, token)

    def _sample(self, batch: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Greedy rows take the argmax; the others sample with their own generator.

        Temperature, softmax and top-p run batched on the model's device (a top-p sort over a
        150k vocabulary is slow on cpu); only the final draw runs per row on cpu, where each
        sequence's generator lives.
        """
        tokens: list[int] = logits.argmax(-1).tolist()
        # Below this, logits / temperature overflows to inf and softmax to NaN: sample greedily
        # (vLLM's threshold). A fuzzer's temperature of 5e-324 once failed a whole batch.
        rows = [i for i, s in enumerate(batch) if s.temperature >= _MIN_TEMPERATURE]
        if not rows:
            return tokens
        device = logits.device
        index = torch.tensor(rows, device=device)
        temperature = torch.tensor([batch[i].temperature for i in rows], device=device)
        scaled = logits.index_select(0, index).float() / temperature.unsqueeze(1)
        probs = torch.softmax(scaled, dim=-1)
        top_p = [batch[i].top_p for i in rows]
        if min(top_p) < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest head of the distribution whose mass reaches top_p (at least one)
            outside = sorted_probs.cumsum(-1) - sorted_probs > torch.tensor(
                top_p, device=device
            ).unsqueeze(1)
            probs = torch.zeros_like(probs).scatter_(
                -1, order, sorted_probs.masked_fill(outside, 0)
            )
        probs = probs.cpu()
        for j, i in enumerate(rows):
            tokens[i] = int(torch.multinomial(probs[j], 1, generator=batch[i].generator))
        return tokens

    def _advance(self, sequence: Sequence, token: int) -> None:
        if sequence.cancelled:
            sequence.done = True
            return
        sequence.generated.append(token)
        sequence.unreported_tokens += 1
        if token in self.eos_token_ids:
            self._emit_text(sequence, sequence.stream.flush())
            self._finish(sequence, "stop")
            return
        text, stopped = sequence.stream.push(token)
        self._emit_text(sequence, text)
        if stopped:
            self._finish(sequence, "stop")
        elif (
            len(sequence.generated) >= sequence.max_tokens
            or sequence.next_position + 1 >= self.max_context
        ):
            self._emit_text(sequence, sequence.stream.flush())
            self._finish(sequence, "length")

    def _emit_text(self, sequence: Sequence, text: str) -> None:
        if text:
            self._deliver(sequence, TokenDelta(text=text, n_tokens=sequence.unreported_tokens))
            sequence.unreported_tokens = 0

    def _finish(self, sequence: Sequence, reason: FinishReason) -> None:
        prompt_tokens = sequence.reported_prompt_tokens
        self._deliver(
            sequence,
            Finished(
                finish_reason=reason,
                prompt_tokens=len(sequence.prompt_ids) if prompt_tokens is None else prompt_tokens,
                completion_tokens=len(sequence.generated),
            ),
        )
        sequence.done = True

    def _deliver(self, sequence: Sequence, event: EngineEvent) -> None:
        try:
            sequence.sink(event)
        except RuntimeError:  # the consumer's event loop is gone: nobody is listening
            sequence.cancelled = True

    def _drop_finished(self) -> None:
        """Remove done and cancelled rows from the batch, and cache columns no row needs."""
        keep = [i for i, s in enumerate(self._active) if not (s.done or s.cancelled)]
        if len(keep) == len(self._active):
            return
        if not keep:
            self._active, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        assert self._mask is not None
        mask = self._mask.index_select(0, index)
        first = int((mask.sum(0) > 0).nonzero()[0])  # leading columns that are padding in every row
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._mask = mask[:, first:]
        self._active = [self._active[i] for i in keep]

    def _take_all(self, joiners: list[Sequence]) -> list[Sequence]:
        """Empty the batch and drop its cache; returns the sequences that were in it."""
        taken = [s for s in [*self._active, *joiners] if not s.done]
        self._active, self._cache, self._mask = [], None, None
        return taken

    def _fail(self, sequences: list[Sequence], error: BaseException) -> None:
        for sequence in sequences:
            sequence.done = True
            self._deliver(sequence, error)

    def _fail_all(self, joiners: list[Sequence], error: BaseException) -> None:
        self._fail(self._take_all(joiners), error)


def _is_plain_dynamic(cache: Any) -> bool:
    """Joining rewrites keys/values by hand, which is right only for full-attention layers."""
    from transformers.cache_utils import DynamicLayer

    layers: list[Any] = list(getattr(cache, "layers", None) or [])
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    return torch.cat([tensor.new_zeros((tensor.shape[0], missing)), tensor], dim=1)


def _stack_left_padded(old: torch.Tensor, new: torch.Tensor, length: int) -> torch.Tensor:
    """Concatenate [B, H, T, D] caches on the batch axis, left-padding T to `length`."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        missing = length - t.shape[2]
        if missing == 0:
            return t
        zeros = t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3]))
        return torch.cat([zeros, t], dim=2)

    return torch.cat([pad(old), pad(new)], dim=0)
