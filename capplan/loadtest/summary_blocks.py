"""The blocks a summary.json step is made of, as frozen dataclasses (docs/metrics.md).

Each block reads itself with `from_dict`, tolerant of old and partial files (a missing figure
is None, never a made-up zero), and writes itself with `to_dict` in the shape
`capplan.loadtest.summary` writes, so that a summary read and written again is unchanged.
`summary_model` puts them together into steps and runs (the run's own: `summary_run_blocks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The keys `capplan.loadtest.metrics.stats` writes, in its order (PERCENTILES, then the rest).
STAT_KEYS = ("p50", "p90", "p95", "p99", "mean", "max", "min", "count")
# What the client self-check keeps of its loop lag (`capplan.loadtest.selfcheck.loop_figures`).
LOOP_LAG_KEYS = ("p50", "p99", "max", "count")


def mapping(value: object) -> Mapping[str, Any]:
    """`value` when it is a JSON object, else an empty one: a missing block reads as empty."""
    return value if isinstance(value, Mapping) else {}


def number(value: object) -> float | None:
    """A JSON number as a float; None for null, a missing key, a boolean or anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def count(value: object) -> int | None:
    """A JSON count as an int; None when missing."""
    figure = number(value)
    return None if figure is None else int(figure)


def text(value: object) -> str | None:
    return None if value is None else str(value)


def texts(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def counts(value: object) -> dict[str, int]:
    """{name: count}, as `by_status` or `output_source` hold them."""
    return {str(k): int(n) for k, v in mapping(value).items() if (n := count(v)) is not None}


def numbers(value: object) -> dict[str, float]:
    return {str(k): n for k, v in mapping(value).items() if (n := number(v)) is not None}


@dataclass(frozen=True)
class Stats:
    """Percentiles and moments of one latency (or of output tokens per request); None: no value."""

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None
    max: float | None = None
    min: float | None = None
    count: int | None = None

    @classmethod
    def from_dict(cls, value: object) -> Stats:
        data = mapping(value)
        return cls(
            p50=number(data.get("p50")),
            p90=number(data.get("p90")),
            p95=number(data.get("p95")),
            p99=number(data.get("p99")),
            mean=number(data.get("mean")),
            max=number(data.get("max")),
            min=number(data.get("min")),
            count=count(data.get("count")),
        )

    def value(self, stat: str) -> float | None:
        """One statistic by name (`p95`, `mean`, `count`...)."""
        if stat not in STAT_KEYS:
            raise KeyError(stat)
        figure = getattr(self, stat)
        return None if figure is None else float(figure)

    def to_dict(self, keys: tuple[str, ...] = STAT_KEYS) -> dict[str, float | int | None]:
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Requests:
    """How many requests a step measured and how they ended (warmup counted apart)."""

    total: int | None = None
    ok: int | None = None
    failed: int | None = None
    warmup_excluded: int | None = None
    by_status: dict[str, int] = field(default_factory=dict)
    by_error: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, value: object) -> Requests:
        data = mapping(value)
        return cls(
            total=count(data.get("total")),
            ok=count(data.get("ok")),
            failed=count(data.get("failed")),
            warmup_excluded=count(data.get("warmup_excluded")),
            by_status=counts(data.get("by_status")),
            by_error=counts(data.get("by_error")),
            error_examples={str(k): str(v) for k, v in mapping(data.get("error_examples")).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "warmup_excluded": self.warmup_excluded,
            "by_status": dict(self.by_status),
            "by_error": dict(self.by_error),
            "error_examples": dict(self.error_examples),
        }


@dataclass(frozen=True)
class Tokens:
    """Prompt and output tokens of the successful requests, and where the counts came from."""

    prompt_total: int | None = None
    output_total: int | None = None
    output_per_request: Stats = field(default_factory=Stats)
    prompt_source: dict[str, int] = field(default_factory=dict)
    output_source: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, value: object) -> Tokens:
        data = mapping(value)
        return cls(
            prompt_total=count(data.get("prompt_total")),
            output_total=count(data.get("output_total")),
            output_per_request=Stats.from_dict(data.get("output_per_request")),
            prompt_source=counts(data.get("prompt_source")),
            output_source=counts(data.get("output_source")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_total": self.prompt_total,
            "output_total": self.output_total,
            "output_per_request": self.output_per_request.to_dict(),
            "prompt_source": dict(self.prompt_source),
            "output_source": dict(self.output_source),
        }


@dataclass(frozen=True)
class Throughput:
    """Over the step's window: from the first intended (or actual) send to the last end."""

    requests_per_s: float | None = None
    output_tokens_per_s: float | None = None
    window_s: float | None = None

    @classmethod
    def from_dict(cls, value: object) -> Throughput:
        data = mapping(value)
        return cls(
            requests_per_s=number(data.get("requests_per_s")),
            output_tokens_per_s=number(data.get("output_tokens_per_s")),
            window_s=number(data.get("window_s")),
        )

    def to_dict(self) -> dict[str, float | None]:
        return {
            "requests_per_s": self.requests_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "window_s": self.window_s,
        }


@dataclass(frozen=True)
class Goodput:
    """Requests meeting every SLO set: per second, and as a fraction of all measured."""

    requests_per_s: float | None = None
    fraction: float | None = None
    slo: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, value: object) -> Goodput:
        if number(value) is not None:  # the oldest summaries wrote goodput as one number
            return cls(requests_per_s=number(value))
        data = mapping(value)
        return cls(
            requests_per_s=number(data.get("requests_per_s")),
            fraction=number(data.get("fraction")),
            slo=numbers(data.get("slo")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests_per_s": self.requests_per_s,
            "fraction": self.fraction,
            "slo": dict(self.slo),
        }


@dataclass(frozen=True)
class LoopFigures:
    """One client loop over one step: how late its probe woke, and its share of a core."""

    loop_lag_ms: Stats | None = None
    loop_cpu_fraction: float | None = None

    @classmethod
    def from_dict(cls, value: object) -> LoopFigures:
        data = mapping(value)
        lag = data.get("loop_lag_ms")
        return cls(
            loop_lag_ms=Stats.from_dict(lag) if isinstance(lag, Mapping) else None,
            loop_cpu_fraction=number(data.get("loop_cpu_fraction")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.loop_lag_ms is not None:
            out["loop_lag_ms"] = self.loop_lag_ms.to_dict(LOOP_LAG_KEYS)
        if self.loop_cpu_fraction is not None:
            out["loop_cpu_fraction"] = self.loop_cpu_fraction
        return out


@dataclass(frozen=True)
class ClientCheck:
    """The client's self-check of one step (`client`): the httpx engine's one loop, or each
    Locust worker's; the worst decides `client_bound`."""

    client_bound: bool = False
    reasons: tuple[str, ...] = ()
    loop: LoopFigures = field(default_factory=LoopFigures)
    workers: dict[str, LoopFigures] | None = None  # Locust: by worker

    @classmethod
    def from_dict(cls, value: object) -> ClientCheck:
        data = mapping(value)
        workers = data.get("workers")
        return cls(
            client_bound=bool(data.get("client_bound", False)),
            reasons=texts(data.get("reasons")),
            loop=LoopFigures.from_dict(data),
            workers=(
                {str(k): LoopFigures.from_dict(v) for k, v in workers.items()}
                if isinstance(workers, Mapping)
                else None
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        out = self.loop.to_dict()
        if self.workers is not None:
            out["workers"] = {k: v.to_dict() for k, v in self.workers.items()}
        out["client_bound"] = self.client_bound
        out["reasons"] = list(self.reasons)
        return out


@dataclass(frozen=True)
class LoadModelRun:
    """Which load model an engine really ran for a step (`load_model_run`)."""

    engine: str
    mode: str  # "closed" | "open"
    how: str

    @classmethod
    def from_dict(cls, value: object) -> LoadModelRun | None:
        data = mapping(value)
        if not data:
            return None
        return cls(str(data.get("engine", "")), str(data.get("mode", "")), str(data.get("how", "")))

    def to_dict(self) -> dict[str, str]:
        return {"engine": self.engine, "mode": self.mode, "how": self.how}


@dataclass(frozen=True)
class Window:
    """`window`: a step as planned and as run, and whether (and why) it was extended to reach
    its minimum of measured requests (`capplan.loadtest.window`)."""

    planned_s: float | None = None  # --duration; None for a step of --requests
    ran_s: float | None = None
    warmup: str | None = None  # as people read it: `2 s`, `1 request per user`, `none`
    min_requests: int | None = None
    measured: int | None = None
    extended: bool = False
    extension_requests: int | None = None
    why: str | None = None  # one sentence; None when not extended

    @classmethod
    def from_dict(cls, value: object) -> Window | None:
        if not isinstance(value, Mapping):
            return None  # a summary before schema 1.2, or a ladder's `overall`
        return cls(
            planned_s=number(value.get("planned_s")),
            ran_s=number(value.get("ran_s")),
            warmup=text(value.get("warmup")),
            min_requests=count(value.get("min_requests")),
            measured=count(value.get("measured")),
            extended=value.get("extended") is True,
            extension_requests=count(value.get("extension_requests")),
            why=text(value.get("why")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "planned_s": self.planned_s,
            "ran_s": self.ran_s,
            "warmup": self.warmup,
            "min_requests": self.min_requests,
            "measured": self.measured,
            "extended": self.extended,
            "extension_requests": self.extension_requests,
            "why": self.why,
        }


@dataclass(frozen=True)
class Retries:
    """`retries`: a step's 429/503 answers, the resends and the time users waited."""

    refused: int | None = None
    resent: int | None = None
    backoffs: int | None = None
    backoff_s: float | None = None

    @classmethod
    def from_dict(cls, value: object) -> Retries | None:
        if not isinstance(value, Mapping):
            return None  # a summary before schema 1.2, or a ladder's `overall`
        return cls(
            refused=count(value.get("refused")),
            resent=count(value.get("resent")),
            backoffs=count(value.get("backoffs")),
            backoff_s=number(value.get("backoff_s")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "refused": self.refused,
            "resent": self.resent,
            "backoffs": self.backoffs,
            "backoff_s": self.backoff_s,
        }
