"""What a server said in an error answer, as a person reads it: one reading for every quote.

The stop rules, the preflight and the exit-3 verdict quote it in full; the summary keeps a
shorter example of each kind of failure (`requests.error_examples`).
"""

from __future__ import annotations

import json

MESSAGE_CHARS = 300


def server_message(
    detail: str | None, *, chars: int = MESSAGE_CHARS, empty: str = "no message"
) -> str:
    """An OpenAI-style error's message, FastAPI's `detail`, or the body (or exception) itself,
    on one line and at most `chars` long; `empty` when there is nothing to read."""
    text = " ".join((detail or "").split())
    try:
        body = json.loads(text)
    except ValueError:
        body = None  # an HTML page, plain text, an exception's words: quoted as they are
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            text = str(error["message"])
        elif isinstance(error, str):
            text = error
        elif body.get("detail"):  # FastAPI's own errors
            text = str(body["detail"])
    return text[:chars] or empty
