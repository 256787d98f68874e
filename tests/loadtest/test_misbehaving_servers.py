"""Servers that fail as real ones do: every failure is a counted record with a reason."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from capplan.loadtest.clock import RunClock
from capplan.loadtest.httpx.engine import make_client, send_one
from capplan.loadtest.prompts import PromptSpec
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.request import Target
from capplan.loadtest.summary import summarize

from .misbehaving_server import CHUNKS, TOKENS_PER_CHUNK, misbehaving_server


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with misbehaving_server() as url:
        yield url


def _send(base_url: str, timeout_s: float = 5.0, count_tokens: object = None) -> RequestRecord:
    target = Target(base_url=base_url, model_name="m", timeout_s=timeout_s)

    async def go() -> RequestRecord:
        async with make_client(target) as client:
            return await send_one(
                client,
                target,
                PromptSpec(prompt="hi", max_tokens=16, prompt_tokens=None),
                clock=RunClock(),
                request_id="r",
                count_tokens=count_tokens,  # type: ignore[arg-type]
            )

    return asyncio.run(go())


@pytest.mark.parametrize("mode,status", [("html500", 500), ("html502", 502)])
def test_proxy_html_error_pages_are_failures_counted_by_status_with_their_body(
    server: str, mode: str, status: int
) -> None:
    record = _send(f"{server}/{mode}")
    assert (record.status, record.error) == (status, "http_error")
    assert "<h1>" in (record.error_detail or "")
    summary = summarize([record], {"url": server})
    assert summary["requests"]["by_status"] == {str(status): 1}
    assert summary["requests"]["error_examples"][f"http_error {status}"].startswith("<html>")


def test_a_connection_reset_mid_stream_is_a_read_error_with_a_reason(server: str) -> None:
    record = _send(f"{server}/reset")
    assert (record.status, record.error) == (200, "read_error")
    assert "reset" in (record.error_detail or "")
    assert record.first_token is not None and len(record.chunk_times) == 3
    summary = summarize([record], {"url": server})
    assert summary["requests"]["by_error"] == {"read_error": 1}
    assert summary["requests"]["failed"] == 1


def test_a_stream_that_stops_sending_ends_as_a_timeout_not_a_hang(server: str) -> None:
    record = _send(f"{server}/stall", timeout_s=0.5)
    assert (record.status, record.error) == (200, "timeout")
    assert 0.4 < record.end - record.send < 5.0


def test_usage_only_at_the_end_counts_every_token_of_multi_token_chunks(server: str) -> None:
    record = _send(f"{server}/usage_at_end")
    assert record.ok
    assert (record.output_tokens, record.output_tokens_source) == (
        CHUNKS * TOKENS_PER_CHUNK,
        "server",
    )
    assert len(record.chunk_times) == CHUNKS  # the role-only chunk and the usage chunk excluded
    assert record.chunk_tokens == []  # per-chunk counts unknown: never guessed


def test_without_usage_the_token_source_falls_back_and_is_recorded_per_request(
    server: str,
) -> None:
    counted = _send(f"{server}/no_usage", count_tokens=len)  # one character, one token
    assert (counted.output_tokens, counted.output_tokens_source) == (15, "tokenizer")
    chunks = _send(f"{server}/no_usage")
    assert (chunks.output_tokens, chunks.output_tokens_source) == (CHUNKS, "chunks")
    assert chunks.chunk_tokens == []
    summary = summarize([counted, chunks], {"url": server})
    assert summary["tokens"]["output_source"] == {"tokenizer": 1, "chunks": 1}
    assert any("mixed sources" in note for note in summary["notes"])


def test_an_unexpected_client_side_exception_is_a_counted_failure(server: str) -> None:
    def broken_tokenizer(text: str) -> int:
        raise RuntimeError("tokenizer exploded")

    record = _send(f"{server}/no_usage", count_tokens=broken_tokenizer)
    assert record.error == "client_error"
    assert "tokenizer exploded" in (record.error_detail or "")
