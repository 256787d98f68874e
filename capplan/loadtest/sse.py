"""Turns an OpenAI-compatible response (SSE stream or JSON body) into record fields.

Shared by every engine so that TTFT and token counts mean the same thing everywhere. Robust to
servers that send several tokens per chunk, a role-only first chunk, a usage-only last chunk,
usage on every chunk (vLLM's continuous usage stats) and odd choice indexes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capplan.loadtest.record import RequestRecord

TokenCounter = Callable[[str], int]


def _choice_text(choice: dict[str, Any]) -> str:
    """Content a choice carries: completions `text`, chat `delta.content`, or reasoning text."""
    text = choice.get("text")
    if isinstance(text, str):
        return text
    delta = choice.get("delta") or choice.get("message") or {}
    if not isinstance(delta, dict):
        return ""
    parts = [
        delta.get(key)
        for key in ("content", "reasoning_content", "reasoning")
        if isinstance(delta.get(key), str)
    ]
    return "".join(p for p in parts if p)


@dataclass
class StreamAccumulator:
    """Feed it each SSE line with its arrival time; then `apply_to` a record."""

    chunk_times: list[float] = field(default_factory=list)
    chunk_texts: list[str] = field(default_factory=list)
    chunk_usage_tokens: list[int | None] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    done: bool = False
    error: str | None = None
    _last_completion_tokens: int = 0

    def feed_line(self, line: str, t: float) -> None:
        line = line.strip()
        if not line.startswith("data:"):
            return  # blank separators, `event:` and `:` comment lines carry nothing we count
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            self.error = "bad_chunk"
            return
        if not isinstance(chunk, dict):
            return
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            self.error = "stream_error"
            if isinstance(err, dict) and err.get("message"):
                self.error = f"stream_error: {err['message']}"
            return
        usage = chunk.get("usage")
        completion_now: int | None = None
        if isinstance(usage, dict):
            self.usage = usage
            if isinstance(usage.get("completion_tokens"), int):
                completion_now = usage["completion_tokens"]
        text = ""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            text += _choice_text(choice)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if text:
            self.chunk_times.append(t)
            self.chunk_texts.append(text)
            if completion_now is not None:
                self.chunk_usage_tokens.append(completion_now - self._last_completion_tokens)
            else:
                self.chunk_usage_tokens.append(None)
        if completion_now is not None:
            self._last_completion_tokens = completion_now

    @property
    def text(self) -> str:
        return "".join(self.chunk_texts)

    def apply_to(self, record: RequestRecord, count_tokens: TokenCounter | None = None) -> None:
        record.chunk_times = list(self.chunk_times)
        record.first_token = self.chunk_times[0] if self.chunk_times else None
        record.finish_reason = self.finish_reason
        _apply_counts(record, self.usage, self.text, len(self.chunk_times), count_tokens)
        per_chunk = self.chunk_usage_tokens
        if per_chunk and all(n is not None for n in per_chunk):
            record.chunk_tokens = [int(n) for n in per_chunk if n is not None]
        elif record.output_tokens_source != "chunks" and record.output_tokens == len(
            self.chunk_times
        ):
            # An independent count equal to the chunk count: one token per chunk. Counted from
            # the chunks themselves this would be circular, so per-chunk tokens stay unknown.
            record.chunk_tokens = [1] * len(self.chunk_times)
        if self.error and record.error is None:
            record.error = "stream_error"
            record.error_detail = self.error


def apply_json_response(
    record: RequestRecord, body: dict[str, Any], count_tokens: TokenCounter | None = None
) -> None:
    """Fills token counts from a non-streamed completion body."""
    if not isinstance(body, dict):
        raise ValueError(f"response body is a JSON {type(body).__name__}, not an object")
    text = ""
    for choice in body.get("choices") or []:
        if isinstance(choice, dict):
            text += _choice_text(choice)
            if choice.get("finish_reason"):
                record.finish_reason = choice["finish_reason"]
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    _apply_counts(record, usage, text, 1 if text else 0, count_tokens)


def _apply_counts(
    record: RequestRecord,
    usage: dict[str, Any] | None,
    text: str,
    n_chunks: int,
    count_tokens: TokenCounter | None,
) -> None:
    if usage and isinstance(usage.get("prompt_tokens"), int):
        record.prompt_tokens = usage["prompt_tokens"]
        record.prompt_tokens_source = "server"
    if usage and isinstance(usage.get("completion_tokens"), int):
        record.output_tokens = usage["completion_tokens"]
        record.output_tokens_source = "server"
    elif count_tokens is not None:
        record.output_tokens = count_tokens(text) if text else 0
        record.output_tokens_source = "tokenizer"
    else:
        record.output_tokens = n_chunks
        record.output_tokens_source = "chunks"


MODELS_PATHS = ("/v1/models", "/models")  # where engines look for the served model's id


def first_model_id(status: int, body: object) -> str | None:
    """The first model id of a /v1/models answer, or None when it lists none."""
    models = body.get("data") if isinstance(body, dict) else None
    if status == 200 and isinstance(models, list) and models and isinstance(models[0], dict):
        return str(models[0]["id"])
    return None


# --- what every engine does around the response: the record, failures, error bodies -----------

ERROR_BODY_LIMIT = 500  # characters of an error body or exception kept in a record


def new_record(
    *,
    request_id: str,
    step: str,
    endpoint: str,
    stream: bool,
    intended_start: float | None,
    prompt_tokens: int | None,
) -> RequestRecord:
    """A record before sending; a prompt built to an exact length carries its tokenizer count."""
    record = RequestRecord(
        request_id=request_id,
        step=step,
        endpoint=endpoint,
        stream=stream,
        intended_start=intended_start,
    )
    if prompt_tokens is not None:
        record.prompt_tokens = prompt_tokens
        record.prompt_tokens_source = "tokenizer"
    return record


def record_failure(record: RequestRecord, kind: str, exc: BaseException) -> None:
    """An exception as the record's error class and detail (docs/metrics.md)."""
    record.error = kind
    # httpx and the OS often raise with an empty message; the cause then says what happened.
    message = (
        str(exc) or str(exc.__cause__ or exc.__context__ or "") or _EMPTY_MESSAGE.get(kind, "")
    )
    record.error_detail = f"{type(exc).__name__}: {message}"[:ERROR_BODY_LIMIT]


_EMPTY_MESSAGE = {
    "read_error": "connection closed or reset by the server mid-response",
    "timeout": "no byte from the server within --timeout",
    "connect_error": "could not connect",
}


def record_deadline(record: RequestRecord, timeout_s: float) -> None:
    record.error = "timeout"
    record.error_detail = f"request ran past {timeout_s:g} s"


def apply_error_response(record: RequestRecord, body: bytes, retry_after: object) -> None:
    """A non-200 answer: its body (cut short) and a numeric Retry-After, when one was sent."""
    record.error = "http_error"
    record.error_detail = body[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
    if isinstance(retry_after, str):
        with contextlib.suppress(ValueError):  # an HTTP-date: not used for pacing
            record.retry_after_s = float(retry_after)


def mark_incomplete(accumulator: StreamAccumulator, record: RequestRecord) -> None:
    """A stream that ended cleanly but before [DONE] or a finish_reason is `incomplete`."""
    if not accumulator.done and accumulator.finish_reason is None and record.error is None:
        record.error = "incomplete"
        record.error_detail = "stream ended without [DONE] or a finish_reason"
