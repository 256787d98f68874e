"""Incremental detokenization: stop strings across tokens, characters split across tokens."""

from __future__ import annotations

from reference_server.text_stream import TextStream


def char_decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def byte_decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def push_all(stream: TextStream, text: str) -> tuple[list[str], bool]:
    released, stopped = [], False
    for ch in text:
        piece, stopped = stream.push(ord(ch))
        released.append(piece)
        if stopped:
            break
    return released, stopped


def test_without_stop_strings_every_token_is_released_at_once() -> None:
    released, stopped = push_all(TextStream(char_decode), "abc")
    assert released == ["a", "b", "c"]
    assert not stopped


def test_stop_string_split_across_tokens_is_held_back_then_cut() -> None:
    released, stopped = push_all(TextStream(char_decode, ("END",)), "abENxEND tail")
    assert stopped
    # "EN" waited until "x" showed it was no stop; the text ends before the stop string
    assert released == ["a", "b", "", "", "ENx", "", "", ""]
    assert "".join(released) == "abENx"


def test_earliest_of_several_stop_strings_wins() -> None:
    released, stopped = push_all(TextStream(char_decode, ("zz", "b")), "abzz")
    assert stopped
    assert "".join(released) == "a"


def test_flush_releases_a_held_back_stop_prefix() -> None:
    stream = TextStream(char_decode, ("END",))
    released, _ = push_all(stream, "abE")
    assert "".join(released) == "ab"
    assert stream.flush() == "E"


def test_multibyte_character_waits_for_its_last_byte() -> None:
    stream = TextStream(byte_decode)
    pieces = [stream.push(b)[0] for b in "é!".encode()]
    assert pieces == ["", "é", "!"]
