"""Incremental detokenization with stop strings: token ids in, releasable text out.

Text is released only when it is final: a token that ends inside a multi-byte character waits
for the next one, and a suffix that could still grow into a stop string is held back until it
cannot.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    """Turns one sequence's generated token ids into text, and finds its stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        # Decoding a window that starts a few tokens back keeps tokenizers that merge spaces
        # across token boundaries (sentencepiece) exact.
        self._prefix_offset = 0
        self._read_offset = 0
        self._pending = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token. Returns (text now final, whether a stop string was reached)."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR):
            self._pending += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
        return self._release()

    def flush(self) -> str:
        """All text not released yet (the sequence ended for another reason than a stop string)."""
        rest = self._decode(self._ids[self._prefix_offset :])
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._pending + rest[len(prefix) :]
        self._pending = ""
        self._prefix_offset = self._read_offset = len(self._ids)
        return text

    def _release(self) -> tuple[str, bool]:
        if not self._stop:
            text, self._pending = self._pending, ""
            return text, False
        hits = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if hits:
            text = self._pending[: min(hits)]
            self._pending = ""
            return text, True
        hold = _longest_stop_prefix_suffix(self._pending, self._stop)
        cut = len(self._pending) - hold
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text, False


def _longest_stop_prefix_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
