"""One request's state inside the engine, and the events it sends back."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from reference_server.backend import Finished, TokenDelta
from reference_server.text_stream import TextStream

EngineEvent = TokenDelta | Finished | BaseException
Sink = Callable[[EngineEvent], None]


class EngineClosed(RuntimeError):
    """The engine stopped before this sequence finished."""


class RequestTooLarge(ValueError):
    """prompt + max_tokens can never fit the KV pool or the context: refused, never queued."""


@dataclass(eq=False)
class Sequence:
    """One request. `sink` is called from the engine thread with each event."""

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
    # engine state while admitted: its row of the index table, its blocks, its prefill progress
    row: int = -1
    blocks: list[int] = field(default_factory=list)
    prefilled: int = 0
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        # Its own generator: a seeded request samples the same tokens whatever shares its batch.
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed if self.seed is not None else random.getrandbits(63))

    @property
    def reserved_tokens(self) -> int:
        """KV positions reserved at admission: the prompt and every token it may generate."""
        return len(self.prompt_ids) + self.max_tokens

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.prompt_ids) and not self.finished

    @property
    def finished(self) -> bool:
        return self.done or self.cancelled

    @property
    def next_position(self) -> int:
        """Position of the last sampled token: the next one fed to the model."""
        return len(self.prompt_ids) + len(self.generated) - 1
