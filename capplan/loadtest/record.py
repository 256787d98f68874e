"""The per-request record: what every engine writes, one JSON object per line.

Field meanings and the metrics derived from them are defined in docs/metrics.md.
All times are epoch seconds from `RunClock`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Literal

TokenSource = Literal["server", "tokenizer", "chunks", "none"]


@dataclass
class RequestRecord:
    request_id: str
    step: str = ""  # ladder step label, e.g. "concurrency=4" or "rate=2.0"
    worker: str = ""  # engine worker that sent it ("" for the httpx engine)
    endpoint: str = "completions"  # "completions" | "chat"
    stream: bool = True
    intended_start: float | None = None  # when the load model meant to send it (open loop)
    send: float = 0.0  # request written to the socket
    first_byte: float | None = None  # first response byte
    first_token: float | None = None  # first chunk carrying content (not role-only, not usage)
    end: float = 0.0  # last byte, or the moment the error was seen
    chunk_times: list[float] = field(default_factory=list)  # each content-carrying chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens per content chunk, when known
    status: int | None = None  # HTTP status; None when no response arrived
    error: str | None = None  # error class (docs/metrics.md); None when ok
    error_detail: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    prompt_tokens_source: TokenSource = "none"
    output_tokens_source: TokenSource = "none"
    finish_reason: str | None = None
    retry_after_s: float | None = None
    warmup: bool = False
    extension: bool = False  # sent after the step's planned end, to reach --min-requests
    retry: int = 0  # 0: a request's first send; k: its k-th resend after a 429/503 (closed loop)
    backoff_s: float | None = None  # how long its sender then waited before sending again

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RecordWriter:
    """Appends records to `requests.jsonl` as they finish: a crash loses only in-flight requests."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._fsync = fsync
        self.count = 0

    def write(self, record: RequestRecord) -> None:
        self._file.write(record.to_json() + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(path: str | Path) -> Iterator[RequestRecord]:
    """Reads a requests.jsonl; a torn last line (killed writer) is skipped."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            yield RequestRecord.from_dict(data)


def read_records(path: str | Path) -> list[RequestRecord]:
    return list(iter_records(path))


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> None:
    with RecordWriter(path) as writer:
        for record in records:
            writer.write(record)
