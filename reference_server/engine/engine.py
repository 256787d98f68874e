"""The fixed-KV engine: continuous batching over a pool allocated once, one step at a time.

A step (engine thread only): release the rows of finished or cancelled sequences; admit waiting
sequences in FIFO order while a row and their whole reservation (prompt + max_tokens, in blocks)
are free; decode every decoding row (one forward, split only when short and long contexts would
pad the gathered keys past the pool); then prefill at most one chunk of waiting prompt tokens.
So a running stream waits at most one decode forward plus one chunk for its next token while
prompts join, and a running request can never run out of KV: nothing is preempted, nothing is
allocated mid-stream.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from capplan.estimate.memory_capplan import (
    BLOCK_SIZE,
    EngineLimits,
    context_blocks,
    decode_gather_tokens,
    prefill_gather_tokens,
)
from reference_server.backend import Finished, FinishReason, TokenDelta
from reference_server.engine.inputs import (
    Chunk,
    Forward,
    decode_forward,
    decode_groups,
    plan_chunks,
    prefill_forward,
)
from reference_server.engine.pool import KvPool, PoolCache
from reference_server.engine.sampling import sample
from reference_server.engine.sequence import EngineEvent, RequestTooLarge, Sequence


@dataclass
class EngineCounters:
    forward_passes: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # sum of rows over decode steps
    prefill_forwards: int = 0
    prefill_tokens: int = 0
    peak_batch: int = 0
    out_of_memory: int = 0


class FixedKvEngine:
    """Runs a causal LM over a `KvPool` for many sequences (single-threaded: see runner.py)."""

    def __init__(
        self, model: Any, pool: KvPool, *, limits: EngineLimits, eos_token_ids: set[int]
    ) -> None:
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
        layer_types = getattr(cfg or model.config, "layer_types", None) or ["full_attention"]
        if any(kind != "full_attention" for kind in layer_types):
            # Sliding-window and linear-attention layers keep other state than a full cache.
            raise NotImplementedError("the fixed-KV engine serves full-attention models only")
        self.model = model
        self.pool = pool
        self.limits = limits
        self.eos_token_ids = eos_token_ids
        self.device = pool.storage.device
        self.groups = pool.shape.groups
        self.decode_keys = decode_gather_tokens(limits, pool.capacity)
        self.prefill_keys = prefill_gather_tokens(limits, pool.capacity)
        self.cache = PoolCache(pool, max(self.decode_keys, self.prefill_keys))
        # Row r, column b: the pool block holding positions 16b..16b+15 of the sequence on row r
        # (the trash block where it holds none).
        self.block_table = torch.full(
            (limits.max_batch, context_blocks(limits)),
            pool.trash_block,
            dtype=torch.long,
            device=self.device,
        )
        self._free_rows: deque[int] = deque(range(limits.max_batch))
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admitted, in admission order
        self.counters = EngineCounters()
        self._cache_keyword = cache_keyword(model)

    # ------------------------------------------------------------------ admission

    def check(self, sequence: Sequence) -> None:
        """Raise RequestTooLarge when `sequence` could never be admitted."""
        tokens = sequence.reserved_tokens
        if tokens > self.limits.max_context:
            raise RequestTooLarge(
                f"prompt + max_tokens = {tokens} tokens is over the {self.limits.max_context}-token"
                " context"
            )
        if self.pool.blocks_for(tokens) > self.pool.num_blocks:
            raise RequestTooLarge(
                f"prompt + max_tokens = {tokens} tokens is more than the KV cache holds "
                f"({self.pool.capacity} tokens)"
            )

    def submit(self, sequence: Sequence) -> None:
        self.check(sequence)
        self.waiting.append(sequence)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def step(self) -> None:
        """One iteration: release, admit, decode, then at most one prefill chunk."""
        self.release_finished()
        self._admit()
        decoding = [s for s in self.running if s.decoding]
        if decoding:
            self._decode(decoding)
        prefilling = [s for s in self.running if not s.decoding and not s.finished]
        if prefilling:
            self._prefill(prefilling)

    def release_finished(self) -> None:
        keep = []
        for sequence in self.running:
            if sequence.finished:
                self._release(sequence)
            else:
                keep.append(sequence)
        self.running = keep
        while self.waiting and self.waiting[0].finished:
            self.waiting.popleft()

    def take_all(self) -> list[Sequence]:
        """Empty the engine (after a failed forward, or at stop); returns what was in it."""
        for sequence in self.running:
            self._release(sequence)
        taken = [s for s in [*self.running, *self.waiting] if not s.done]
        self.running, self.waiting = [], deque()
        return taken

    def _release(self, sequence: Sequence) -> None:
        self.pool.release(sequence.blocks)
        self.block_table[sequence.row].fill_(self.pool.trash_block)
        self._free_rows.append(sequence.row)
        sequence.blocks, sequence.row = [], -1

    def _admit(self) -> None:
        """FIFO: the head waits until its whole reservation is free (no overtaking)."""
        while self.waiting and self._free_rows:
            head = self.waiting[0]
            if head.finished:
                self.waiting.popleft()
                continue
            blocks = self.pool.allocate(head.reserved_tokens)
            if blocks is None:
                return
            self.waiting.popleft()
            head.blocks, head.row = blocks, self._free_rows.popleft()
            ids = torch.tensor(blocks, dtype=torch.long)
            self.block_table[head.row, : len(blocks)] = ids.to(self.device)
            self.running.append(head)
        self.counters.peak_batch = max(self.counters.peak_batch, len(self.running))

    # ------------------------------------------------------------------ forwards

    def _decode(self, batch: list[Sequence]) -> None:
        # what each row gathers: its keys in whole blocks
        lengths = [(s.next_position // BLOCK_SIZE + 1) * BLOCK_SIZE for s in batch]
        for group in decode_groups(lengths, self.decode_keys):
            rows = [batch[i] for i in group]
            forward = decode_forward(
                self.block_table,
                [s.row for s in rows],
                [s.generated[-1] for s in rows],
                [s.next_position for s in rows],
                self.groups,
            )
            self._accept(rows, self._forward(forward))
        self.counters.decode_steps += 1
        self.counters.decode_rows += len(batch)

    def _prefill(self, candidates: list[Sequence]) -> None:
        plan = plan_chunks(
            [len(s.prompt_ids) - s.prefilled for s in candidates],
            [s.prefilled for s in candidates],
            self.limits.prefill_chunk_tokens,
            self.prefill_keys,
        )
        chunks = []
        for i, n in plan:
            s = candidates[i]
            chunks.append(Chunk(s.row, s.prompt_ids[s.prefilled : s.prefilled + n], s.prefilled))
        logits = self._forward(
            prefill_forward(self.block_table, chunks, self.pool.trash, self.groups)
        )
        done_rows = []
        for j, (i, n) in enumerate(plan):
            sequence = candidates[i]
            sequence.prefilled += n
            if sequence.prefilled == len(sequence.prompt_ids):
                done_rows.append(j)
        self.counters.prefill_forwards += 1
        self.counters.prefill_tokens += sum(n for _, n in plan)
        if done_rows:
            finished = [candidates[plan[j][0]] for j in done_rows]
            index = torch.tensor(done_rows, device=logits.device)
            self._accept(finished, logits.index_select(0, index))

    def _forward(self, forward: Forward) -> torch.Tensor:
        """The model's own forward over the pool; the logits of each row's last position."""
        self.counters.forward_passes += 1
        self.cache.set_step(forward.write_slots, forward.read_blocks)
        out = self.model(
            input_ids=forward.input_ids,
            position_ids=forward.positions,
            # A prepared mask mapping: transformers builds no mask of its own.
            attention_mask={"full_attention": forward.mask},
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_keyword: self.cache},
        )
        return out.logits[:, -1, :]

    # ------------------------------------------------------------------ tokens out

    def _accept(self, batch: list[Sequence], logits: torch.Tensor) -> None:
        for sequence, token in zip(batch, sample(batch, logits), strict=True):
            self._advance(sequence, token)

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
            or sequence.next_position + 1 >= self.limits.max_context
        ):
            self._emit_text(sequence, sequence.stream.flush())
            self._finish(sequence, "length")

    def _emit_text(self, sequence: Sequence, text: str) -> None:
        if text:
            deliver(sequence, TokenDelta(text=text, n_tokens=sequence.unreported_tokens))
            sequence.unreported_tokens = 0

    def _finish(self, sequence: Sequence, reason: FinishReason) -> None:
        prompt_tokens = sequence.reported_prompt_tokens
        deliver(
            sequence,
            Finished(
                finish_reason=reason,
                prompt_tokens=len(sequence.prompt_ids) if prompt_tokens is None else prompt_tokens,
                completion_tokens=len(sequence.generated),
            ),
        )
        sequence.done = True


def deliver(sequence: Sequence, event: EngineEvent) -> None:
    try:
        sequence.sink(event)
    except RuntimeError:  # the consumer's event loop is gone: nobody is listening
        sequence.cancelled = True


def cache_keyword(model: Any) -> str:
    """`cache`, the keyword transformers 5.2x takes, or `past_key_values` for older releases
    (deprecated in 5.24 and removed in 5.40)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "cache"
    return "cache" if "cache" in parameters else "past_key_values"
