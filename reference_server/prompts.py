"""Prompts to token ids: bounded in length, tokenized off the event loop, long ones apart.

A prompt over the character limit is refused before any tokenizer sees it: tokenizing costs time
in proportion to its length (the embedded tokenizer took 7 s for a 3.9 MB prompt), and a prompt
longer than the context x the vocabulary's longest token cannot fit anyway. The rest, but for
the shortest, are tokenized on worker threads, short and long prompts on separate ones, so a
burst of long prompts queues behind itself, never in front of a short one, and the event loop
keeps answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from reference_server.backend import Backend
from reference_server.generation import ApiError
from reference_server.openai_schema import ChatCompletionRequest, CompletionRequest

# Up to this, a prompt is tokenized inline: under a millisecond (0.7 ms for 1,000 characters on
# the embedded tokenizer, the slowest per character), less than a hop to a thread costs when
# the GIL is busy (up to its 5 ms switch interval).
INLINE_PROMPT_CHARS = 1_000
LONG_PROMPT_CHARS = 16_000  # prompts above this take the long lane
# The derived limit allows for normalizers that fold several characters into one (Unicode NFC
# composes up to three code points into one), so no prompt that fits is ever refused.
_NORMALIZATION_MARGIN = 4


class PromptTokenizer:
    """Tokenizes request prompts for one app; `in_progress` counts those being tokenized."""

    def __init__(
        self, backend: Backend, max_prompt_chars: int | None, max_context: Callable[[], int]
    ) -> None:
        self._backend = backend
        self._configured = max_prompt_chars
        self._max_context = max_context
        self._short = ThreadPoolExecutor(1, thread_name_prefix="capplan-tokenize")
        self._long = ThreadPoolExecutor(1, thread_name_prefix="capplan-tokenize-long")
        self.in_progress = 0

    def limit(self) -> int | None:
        """Characters a prompt may have: the setting, else what the context could ever hold."""
        if self._configured is not None:
            return self._configured
        per_token = self._backend.info.max_token_chars
        if per_token is None or self._max_context() <= 0:
            return None
        return self._max_context() * per_token * _NORMALIZATION_MARGIN

    async def tokenize(self, parsed: CompletionRequest | ChatCompletionRequest) -> list[int]:
        if isinstance(parsed, CompletionRequest):
            text = parsed.prompt_text()
            chars, param = len(text), "prompt"
            work = partial(self._backend.encode, text)
        else:
            messages = parsed.message_dicts()
            chars, param = sum(len(m["content"]) for m in messages), "messages"
            work = partial(self._backend.encode_chat, messages)
        limit = self.limit()
        if limit is not None and chars > limit:
            raise ApiError(
                400, f"prompt of {chars} characters is over this server's limit of {limit} "
                "(--max-prompt-chars); shorten it", reason="prompt_too_long", param=param,
            )  # fmt: skip
        lane = self._long if chars > LONG_PROMPT_CHARS else self._short
        self.in_progress += 1
        try:
            if chars <= INLINE_PROMPT_CHARS:
                return work()
            return await asyncio.get_running_loop().run_in_executor(lane, work)
        except (UnicodeError, TypeError, ValueError) as exc:  # the tokenizer refused the text
            raise ApiError(
                400, f"prompt cannot be tokenized: {exc}", reason="invalid", param=param
            ) from None
        finally:
            self.in_progress -= 1

    def close(self) -> None:
        for lane in (self._short, self._long):
            lane.shutdown(wait=False, cancel_futures=True)
