"""The contract between the HTTP layer and a generation backend.

The app (admission control, OpenAI schema, SSE) talks only to this protocol; the transformers
backend and the emulated backend implement it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]  # already tokenized (chat template applied for chat requests)
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    request_id: str = ""


@dataclass(frozen=True)
class TokenDelta:
    """One or more new tokens, as text. `n_tokens` is exact (counted by the backend)."""

    text: str
    n_tokens: int


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = TokenDelta | Finished


class BackendOutOfMemory(RuntimeError):
    """Generation ran out of accelerator memory (real CUDA OOM or emulated). The app answers 503."""


@dataclass(frozen=True)
class KvPoolInfo:
    """A KV cache allocated once at start: the server admits a request only when the blocks for
    its prompt + max_tokens are free (`AdmissionGate`), so generation never runs out of it."""

    block_size: int
    num_blocks: int

    @property
    def tokens(self) -> int:
        return self.block_size * self.num_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)


@dataclass
class BackendInfo:
    name: str  # "transformers" | "emulated"
    model_id: str
    device: str  # "cuda:0", "cpu", or "emulated:<gpu id>"
    max_context: int
    emulated: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    # The longest token's text, in characters (None: unbounded). A prompt longer than
    # max_context x this cannot fit, so the server refuses it before tokenizing.
    max_token_chars: int | None = None
    kv_pool: KvPoolInfo | None = None  # set by start() when the backend has a fixed KV pool


@runtime_checkable
class Backend(Protocol):
    info: BackendInfo

    async def start(self) -> None:
        """Load and warm up. `/ready` turns 200 after this returns."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. Called from worker threads, several at once: thread-safe, and
        ideally releasing the GIL while it works, so the event loop runs meanwhile."""
        ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat template applied to `messages`, with the generation prompt."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Yields TokenDelta events then exactly one Finished.

        Closing the iterator (`aclose()`, or cancelling the task that iterates it) stops the
        generation and frees its batch slot at once. Raises BackendOutOfMemory on OOM.
        """
        ...

    def memory_stats(self) -> dict[str, Any]:
        """Bytes in use and total: torch.cuda on cuda, emulated KV when emulated, RSS on cpu."""
        ...

    async def close(self) -> None: ...
