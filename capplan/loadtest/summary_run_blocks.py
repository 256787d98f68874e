"""The run-level blocks of summary.json beside its steps: `server_view` and `stopped`.

As the step blocks (`summary_blocks`), each reads itself tolerantly with `from_dict` and writes
itself with `to_dict` in the shape `capplan.loadtest.summary` writes (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capplan.loadtest.summary_blocks import count, mapping, number, numbers, texts


@dataclass(frozen=True)
class Stopped:
    """`stopped`: the run stopped early on a broken target (`capplan.loadtest.stop`)."""

    step: str
    reason: str  # one line, in the server's own words

    @classmethod
    def from_dict(cls, value: object) -> Stopped | None:
        if not isinstance(value, Mapping):
            return None
        return cls(str(value.get("step")), str(value.get("reason")))

    @property
    def line(self) -> str:
        """Where and why, as the run's reasons say it."""
        return f"stopped early in {self.step}: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"step": self.step, "reason": self.reason}


@dataclass(frozen=True)
class ServerFigures:
    """One side of `server_view`: requests, mean TTFT/E2E (and queue time, server side only)."""

    requests: int | None = None
    ttft_mean_ms: float | None = None
    e2e_mean_ms: float | None = None
    queue_mean_ms: float | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None

    @classmethod
    def from_dict(cls, value: object) -> ServerFigures:
        data = mapping(value)
        return cls(
            requests=count(data.get("requests")),
            ttft_mean_ms=number(data.get("ttft_mean_ms")),
            e2e_mean_ms=number(data.get("e2e_mean_ms")),
            queue_mean_ms=number(data.get("queue_mean_ms")),
            output_tokens=count(data.get("output_tokens")),
            prompt_tokens=count(data.get("prompt_tokens")),
        )

    def to_dict(self, *, queue: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "ttft_mean_ms": self.ttft_mean_ms,
            "e2e_mean_ms": self.e2e_mean_ms,
        }
        if queue:  # the client has no queue of its own to report
            out["queue_mean_ms"] = self.queue_mean_ms
        out["output_tokens"] = self.output_tokens
        out["prompt_tokens"] = self.prompt_tokens
        return out


@dataclass(frozen=True)
class ServerView:
    """`server_view`: the server's own /metrics over the run beside the client's records."""

    source: str = ""
    server: ServerFigures = field(default_factory=ServerFigures)
    client: ServerFigures = field(default_factory=ServerFigures)
    ttft_gap_ms: float | None = None  # client minus server, mean TTFT
    e2e_gap_ms: float | None = None
    notes: tuple[str, ...] = ()
    before: dict[str, float] = field(default_factory=dict)  # the raw counters read
    after: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, value: object) -> ServerView | None:
        if not isinstance(value, Mapping):
            return None
        gap = mapping(value.get("client_minus_server_ms"))
        return cls(
            source=str(value.get("source", "")),
            server=ServerFigures.from_dict(value.get("server")),
            client=ServerFigures.from_dict(value.get("client")),
            ttft_gap_ms=number(gap.get("ttft_mean_ms")),
            e2e_gap_ms=number(gap.get("e2e_mean_ms")),
            notes=texts(value.get("notes")),
            before=numbers(value.get("before")),
            after=numbers(value.get("after")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "server": self.server.to_dict(queue=True),
            "client": self.client.to_dict(queue=False),
            "client_minus_server_ms": {
                "ttft_mean_ms": self.ttft_gap_ms,
                "e2e_mean_ms": self.e2e_gap_ms,
            },
            "notes": list(self.notes),
            "before": dict(self.before),
            "after": dict(self.after),
        }
