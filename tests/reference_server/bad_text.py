"""Invalid text in every string field of both POST endpoints: lone surrogates (JSON's `\\udc00`
escape, valid JSON but no valid Unicode) and invalid UTF-8 bytes (no valid JSON text at all)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.reference_server.raw_http import connect, exchange

# Every string field the server reads, in each shape it accepts; `user` and `name` stand for the
# fields it ignores (those may answer 200: nothing reads them).
TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/completions", {"model": "m", "prompt": "hi", "stop": "zz", "user": "u", "max_tokens": 2}),
    ("/v1/completions", {"model": "m", "prompt": ["hi"], "stop": ["zz", "yy"], "max_tokens": 2}),
    (
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi", "name": "n"},
            ],
            "stop": "zz",
            "max_tokens": 2,
        },
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stop": ["zz"],
            "max_tokens": 2,
        },
    ),
]
IGNORED = frozenset({"user", "name"})
_MARK = "\x00MARK\x00"


@dataclass(frozen=True)
class BadBody:
    path: str
    field: str  # dotted, as the server names it in `param`
    kind: str  # "surrogate" | "utf8"
    body: bytes

    @property
    def read_by_server(self) -> bool:
        return self.field.rsplit(".", 1)[-1] not in IGNORED


def _string_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, str):
        yield prefix
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _string_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _string_paths(value, (*prefix, index))


def _with(node: Any, path: tuple[Any, ...], value: str) -> Any:
    copy = json.loads(json.dumps(node))
    target = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return copy


def bad_bodies() -> Iterator[BadBody]:
    for path, template in TEMPLATES:
        for field_path in _string_paths(template):
            field = ".".join(str(part) for part in field_path)
            # ensure_ascii writes the lone surrogate as the escape `\udc00`, as a client would.
            surrogate = json.dumps(_with(template, field_path, "a\udc00b"))
            yield BadBody(path, field, "surrogate", surrogate.encode())
            marked = json.dumps(_with(template, field_path, _MARK), ensure_ascii=False)
            raw = marked.encode().replace(json.dumps(_MARK).encode()[1:-1], b"a\xff\xfeb")
            yield BadBody(path, field, "utf8", raw)


def send_all_on_one_connection(url: str) -> list[tuple[BadBody, int, dict[str, Any]]]:
    """Every bad body over one kept-alive connection (a 500 or a closed connection fails it);
    returns (body, status, JSON answer) for each."""
    results = []
    sock = connect(url, timeout_s=30)
    try:
        for bad in bad_bodies():
            answer = exchange(sock, "POST", bad.path, bad.body)
            assert answer.headers.get("connection") != "close", (bad, answer)
            results.append((bad, answer.status, answer.json()))
    finally:
        sock.close()
    return results


def check_refusals(results: list[tuple[BadBody, int, dict[str, Any]]]) -> None:
    """Each read field is refused with a 4xx naming it (or the body, when it is not UTF-8)."""
    for bad, status, answer in results:
        assert status < 500, (bad, status, answer)
        if not bad.read_by_server:
            continue
        assert 400 <= status < 500, (bad, status, answer)
        param = answer["error"]["param"]
        expected = bad.field if bad.kind == "surrogate" else "body"
        assert param == expected or param.startswith(expected + "."), (bad, answer)
