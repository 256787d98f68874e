"""Request bodies' content: synthetic text of an exact token length, or prompts from a JSONL file.

Synthetic prompts are cut from seeded random words at a token boundary of the chosen tokenizer
and re-encoded until the count is exact (decode/encode is not always a round trip). Without a
tokenizer, one common English word stands for one token: an approximation, labelled as such.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from capplan.errors import InputError
from capplan.loadtest.distributions import TokenDistribution

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "that",
    "with",
    "as",
    "it",
    "was",
    "at",
    "by",
    "from",
    "this",
    "be",
    "are",
    "have",
    "or",
    "an",
    "not",
    "which",
    "one",
    "all",
    "were",
    "can",
    "there",
    "been",
    "has",
    "more",
    "will",
    "their",
    "if",
    "when",
    "what",
    "about",
    "into",
    "time",
    "so",
    "other",
    "some",
    "than",
    "only",
    "new",
    "up",
    "also",
    "these",
    "out",
    "two",
    "first",
    "its",
    "like",
    "over",
    "may",
    "after",
    "any",
    "most",
    "such",
    "where",
    "then",
    "well",
    "system",
    "model",
    "data",
    "load",
    "server",
    "memory",
    "token",
    "request",
    "time",
    "each",
]


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class HFTokenizer:
    """Adapter over a transformers tokenizer: no special tokens, plain lists."""

    inner: Any
    name: str

    def encode(self, text: str) -> list[int]:
        # verbose=False: counting a text longer than the model's context is not an error here
        # (transformers would warn on stderr, over the live progress line).
        return list(self.inner.encode(text, add_special_tokens=False, verbose=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.inner.decode(ids, skip_special_tokens=True))


def load_tokenizer(spec: str | None) -> Tokenizer | None:
    """`embedded`: the reference server's tiny model tokenizer; a directory: AutoTokenizer."""
    if spec is None:
        return None
    if spec == "embedded":
        try:
            from capplan.embedded_tokenizer import load_tokenizer as load_embedded
        except ImportError as exc:
            raise InputError(f"the embedded tokenizer is not available ({exc})") from None
        return HFTokenizer(load_embedded(), "embedded")
    path = Path(spec)
    if not path.is_dir():
        raise InputError(f"tokenizer '{spec}': give 'embedded' or a local tokenizer directory")
    try:
        from transformers import AutoTokenizer

        inner = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"tokenizer '{spec}': cannot load it offline ({exc})") from None
    return HFTokenizer(inner, str(path))


@dataclass(frozen=True)
class PromptSpec:
    """What one request asks: `prompt` for completions, `messages` for chat."""

    prompt: str
    max_tokens: int
    prompt_tokens: int | None  # exact when a tokenizer built it; None when unknown

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def exact_length_text(tokenizer: Tokenizer, n_tokens: int, rng: random.Random) -> str:
    """Text that `tokenizer` encodes to exactly `n_tokens` tokens (closest found otherwise)."""
    words = [rng.choice(_WORDS) for _ in range(n_tokens + 16)]
    ids = tokenizer.encode(" ".join(words))
    while len(ids) < n_tokens:  # a tokenizer that merges words: add more
        ids += tokenizer.encode(" " + " ".join(rng.choice(_WORDS) for _ in range(n_tokens)))
    target = ids[:n_tokens]
    best = tokenizer.decode(target)
    for _ in range(8):
        got = len(tokenizer.encode(best))
        if got == n_tokens:
            return best
        cut = len(target) - (got - n_tokens)
        if got > n_tokens and cut > 0:
            target = target[:cut]
        else:
            target = ids[: len(target) + (n_tokens - got)]
        best = tokenizer.decode(target)
    return best


def approximate_text(n_tokens: int, rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_tokens))


class SyntheticPrompts:
    """Seeded prompts: the i-th request of a run gets the same text on every run."""

    def __init__(
        self,
        prompt_tokens: TokenDistribution,
        max_tokens: TokenDistribution,
        tokenizer: Tokenizer | None,
        seed: int | str,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.tokenizer = tokenizer
        self.seed = seed

    def build(self, index: int) -> PromptSpec:
        rng = random.Random(f"prompt:{self.seed}:{index}")
        n_prompt = self.prompt_tokens.sample(rng)
        n_out = self.max_tokens.sample(rng)
        # Per-request seeds keep prompts distinct, so no server answers from a prefix cache.
        if self.tokenizer is None:
            return PromptSpec(approximate_text(n_prompt, rng), n_out, None)
        text = exact_length_text(self.tokenizer, n_prompt, rng)
        return PromptSpec(text, n_out, n_prompt)


class FilePrompts:
    """Prompts from a JSONL file: {"prompt": ...} or {"messages": [...]}, optional max_tokens."""

    def __init__(self, path: str | Path, max_tokens: TokenDistribution, seed: int | str) -> None:
        self.items = read_prompt_file(path)
        self.max_tokens = max_tokens
        self.seed = seed
        order = list(range(len(self.items)))
        random.Random(f"file:{seed}").shuffle(order)
        self.order = order

    def build(self, index: int) -> PromptSpec:
        text, max_tokens = self.items[self.order[index % len(self.order)]]
        if max_tokens is None:
            max_tokens = self.max_tokens.sample(random.Random(f"max:{self.seed}:{index}"))
        return PromptSpec(text, max_tokens, None)


def read_prompt_file(path: str | Path) -> list[tuple[str, int | None]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file '{path}' does not exist")
    items: list[tuple[str, int | None]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{number}: not a JSON object") from None
        items.append(_prompt_item(data, f"{path}:{number}"))
    if not items:
        raise InputError(f"prompt file '{path}' holds no prompts")
    return items


def _prompt_item(data: object, where: str) -> tuple[str, int | None]:
    if isinstance(data, str):
        return data, None
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object with 'prompt' or 'messages'")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and not isinstance(max_tokens, int):
        raise InputError(f"{where}: max_tokens must be a whole number")
    for key in ("prompt", "text"):
        if isinstance(data.get(key), str):
            return data[key], max_tokens
    messages = data.get("messages")
    if isinstance(messages, list):
        parts = [m.get("content", "") for m in messages if isinstance(m, dict)]
        return "\n".join(p for p in parts if isinstance(p, str)), max_tokens
    raise InputError(f"{where}: expected an object with 'prompt' or 'messages'")


PromptBuilder = SyntheticPrompts | FilePrompts


def make_prompts(
    *,
    prompt_tokens: TokenDistribution,
    max_tokens: TokenDistribution,
    prompt_file: str | None,
    tokenizer: Tokenizer | None,
    seed: int | str,
) -> PromptBuilder:
    if prompt_file:
        return FilePrompts(prompt_file, max_tokens, seed)
    return SyntheticPrompts(prompt_tokens, max_tokens, tokenizer, seed)


def token_counter(tokenizer: Tokenizer | None) -> Callable[[str], int] | None:
    """Counts output tokens when the server reports no usage."""
    if tokenizer is None:
        return None
    return lambda text: len(tokenizer.encode(text))
