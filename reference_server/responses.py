"""OpenAI-compatible answer bodies and SSE chunks, completions and chat alike."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["completion", "chat"]


@dataclass(frozen=True)
class AnswerShape:
    """What every chunk of one answer shares."""

    kind: Kind
    request_id: str
    model: str
    created: int

    @classmethod
    def new(cls, kind: Kind, request_id: str, model: str) -> AnswerShape:
        return cls(kind, request_id, model, int(time.time()))

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model}

    def full(
        self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        """A non-streamed answer."""
        if self.kind == "completion":
            body = self._head("text_completion")
            choice: dict[str, Any] = {
                "index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
            }  # fmt: skip
        else:
            body = self._head("chat.completion")
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        body["choices"] = [choice]
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return body

    def chunk(self, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
        """A streamed chunk; for chat, `text=None` makes the role-only first chunk."""
        if self.kind == "completion":
            body = self._head("text_completion")
            body["choices"] = [
                {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            ]
            return body
        body = self._head("chat.completion.chunk")
        if text is None and finish_reason is None:
            delta: dict[str, Any] = {"role": "assistant", "content": ""}
        elif finish_reason is not None and not text:
            delta = {}
        else:
            delta = {"content": text}
        body["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        return body

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The final chunk `stream_options.include_usage` asks for: usage, empty choices."""
        obj = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
        body = self._head(obj)
        body["choices"] = []
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
