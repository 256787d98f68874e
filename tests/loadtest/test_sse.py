"""Recorded chunk sequences, as real servers send them, through the shared SSE parser."""

from __future__ import annotations

import json

from capplan.loadtest.record import RequestRecord
from capplan.loadtest.sse import StreamAccumulator, apply_json_response


def _feed(lines: list[str]) -> RequestRecord:
    acc = StreamAccumulator()
    for t, line in enumerate(lines):
        acc.feed_line(line, float(t))
    record = RequestRecord(request_id="r", send=0.0)
    acc.apply_to(record)
    return record


def _data(obj: dict) -> str:
    return "data: " + json.dumps(obj)


def _chat(
    content: str | None, *, role: bool = False, finish: str | None = None, idx: int = 0
) -> str:
    delta: dict = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return _data({"choices": [{"index": idx, "delta": delta, "finish_reason": finish}]})


def test_role_only_first_chunk_is_not_the_first_token() -> None:
    record = _feed(
        [
            _chat("", role=True),
            "",
            _chat("Hello"),
            _chat(" world", finish="stop"),
            _data({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}),
            "data: [DONE]",
        ]
    )
    assert record.first_token == 2.0
    assert record.chunk_times == [2.0, 3.0]
    assert (record.output_tokens, record.output_tokens_source) == (2, "server")
    assert (record.prompt_tokens, record.prompt_tokens_source) == (9, "server")
    assert record.finish_reason == "stop"


def test_multi_token_chunks_count_tokens_from_usage_not_chunks() -> None:
    record = _feed(
        [
            _data({"choices": [{"index": 0, "text": " a b c d"}]}),
            _data({"choices": [{"index": 0, "text": " e f", "finish_reason": "length"}]}),
            _data({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}}),
            "data: [DONE]",
        ]
    )
    assert len(record.chunk_times) == 2
    assert record.output_tokens == 6
    assert record.output_tokens_source == "server"


def test_continuous_usage_gives_tokens_per_chunk() -> None:
    def chunk(text: str, done: int) -> str:
        return _data(
            {
                "choices": [{"index": 0, "text": text}],
                "usage": {"prompt_tokens": 3, "completion_tokens": done},
            }
        )

    record = _feed([chunk(" a b", 2), chunk(" c", 3), chunk(" d e f", 6), "data: [DONE]"])
    assert record.chunk_tokens == [2, 1, 3]
    assert record.output_tokens == 6


def test_without_usage_a_tokenizer_counts_else_chunks() -> None:
    lines = [_chat("one two"), _chat(" three", finish="stop"), "data: [DONE]"]
    acc = StreamAccumulator()
    for t, line in enumerate(lines):
        acc.feed_line(line, float(t))
    by_words = RequestRecord(request_id="a")
    acc.apply_to(by_words, count_tokens=lambda text: len(text.split()))
    assert (by_words.output_tokens, by_words.output_tokens_source) == (3, "tokenizer")
    by_chunks = _feed(lines)
    assert (by_chunks.output_tokens, by_chunks.output_tokens_source) == (2, "chunks")


def test_odd_choice_indexes_and_comment_lines_are_handled() -> None:
    record = _feed(
        [
            ": keep-alive",
            "event: message",
            _chat("x", idx=3),
            _chat("y", idx=7, finish="stop"),
            "data: [DONE]",
        ]
    )
    assert record.chunk_times == [2.0, 3.0]
    assert record.error is None


def test_error_event_mid_stream_marks_the_request_failed() -> None:
    record = _feed([_chat("x"), _data({"error": {"message": "CUDA out of memory"}})])
    assert not record.ok
    assert record.error == "stream_error"
    assert "out of memory" in (record.error_detail or "")


def test_non_streamed_body_fills_counts() -> None:
    record = RequestRecord(request_id="r", status=200)
    apply_json_response(
        record,
        {
            "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7},
        },
    )
    assert (record.prompt_tokens, record.output_tokens, record.finish_reason) == (5, 7, "length")
