"""One reading of a server's error answer, for stop reasons, the preflight and the summary."""

from __future__ import annotations

import json

from capplan.loadtest.record import RequestRecord
from capplan.loadtest.server_message import server_message
from capplan.loadtest.stop import SAME_CLIENT_ERROR_ANSWERS, StopRules
from capplan.loadtest.summary import summarize

CONTEXT = "prompt (479 tokens) + max_tokens (16) is over the model's context of 80 tokens"


def test_openai_fastapi_and_plain_bodies_read_as_their_message_on_one_line() -> None:
    assert server_message(json.dumps({"error": {"message": CONTEXT}})) == CONTEXT
    assert server_message(json.dumps({"error": "model not found"})) == "model not found"
    assert server_message(json.dumps({"detail": "Not Found"})) == "Not Found"
    assert server_message("<html>\n<h1>502</h1>\n</html>") == "<html> <h1>502</h1> </html>"
    assert server_message("x" * 1000) == "x" * 300
    assert server_message("x" * 1000, chars=10) == "x" * 10


def test_a_silent_server_reads_as_no_message_unless_the_caller_wants_empty() -> None:
    assert server_message(None) == "no message"
    assert server_message("  \n ") == "no message"
    assert server_message(None, empty="") == ""


def test_the_stop_reason_and_the_summary_quote_the_server_alike() -> None:
    body = json.dumps({"error": {"message": CONTEXT}})
    records = [
        RequestRecord(
            f"r{i}", step="concurrency=1", send=i, end=i + 0.1, status=400,
            error="http_error", error_detail=body,
        )
        for i in range(SAME_CLIENT_ERROR_ANSWERS)
    ]  # fmt: skip
    rules = StopRules()
    reason = None
    for record in records:
        reason = rules.observe(record)
    assert reason is not None and reason.endswith(f": {CONTEXT}")
    summary = summarize(records, {"steps": ["concurrency=1"]}, environment={})
    assert summary["requests"]["error_examples"] == {"http_error 400": CONTEXT[:160]}
