"""summary.json as typed, versioned dataclasses: what every reader of a run's summary uses.

`capplan.loadtest.summary.summarize` writes the dict; `RunSummary.from_dict` reads it (old and
partial files included) and `to_dict` writes it back unchanged. `schema_version` is
`"MAJOR.MINOR"`: the minor grows when keys are added (1.1: each step's numeric `load`; 1.2: each
step's `window` and `retries`, the run's `stopped`), the major when a reader of the old shape
would misread the new. Files before 1.1 (`schema_version: 1`) get each step's load from the
run's config, else from its label (`concurrency=4`); files before 1.2 have no window, retries or
stop (None).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from capplan.loadtest.scenario import LoadConfig, LoadStep, Slo
from capplan.loadtest.summary_blocks import (
    ClientCheck,
    Goodput,
    LoadModelRun,
    Requests,
    Retries,
    Stats,
    Throughput,
    Tokens,
    Window,
    count,
    mapping,
    number,
    text,
    texts,
)
from capplan.loadtest.summary_run_blocks import ServerView, Stopped

SCHEMA_VERSION = "1.2"
# The latency blocks of a step, in the order summary.json writes them (docs/metrics.md).
LATENCY_BLOCKS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "latency_ms", "generator_lag_ms")
OPEN_LOOP_BLOCKS = ("latency_ms", "generator_lag_ms")  # only where requests had a schedule
# The engines whose own block a summary may carry (`summary.apply_engine_block`).
ENGINE_BLOCKS = ("locust",)
LOAD_KINDS = ("closed", "open", "ramp")

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?"
_LABEL = re.compile(rf"^(?P<kind>concurrency|rate|ramp)=(?P<a>{_NUMBER})(?:-(?P<b>{_NUMBER}))?$")


def load_to_dict(load: LoadStep) -> dict[str, Any]:
    """A step's `load`: its kind and the numbers that kind uses."""
    if load.kind == "closed":
        return {"kind": "closed", "concurrency": load.concurrency}
    if load.kind == "open":
        return {"kind": "open", "rate": load.rate}
    return {"kind": "ramp", "rate": load.rate, "ramp_to": load.ramp_to}


def load_from_dict(value: object) -> LoadStep | None:
    data = mapping(value)
    kind = data.get("kind")
    if kind not in LOAD_KINDS:
        return None
    return LoadStep(
        str(kind),
        concurrency=count(data.get("concurrency")) or 0,
        rate=number(data.get("rate")) or 0.0,
        ramp_to=number(data.get("ramp_to")) or 0.0,
    )


def load_from_label(label: str) -> LoadStep | None:
    """A pre-1.1 step's load read back from its label; None when the label is no load."""
    match = _LABEL.match(label)
    if match is None:
        return None
    a, b = float(match["a"]), match["b"]
    if match["kind"] == "ramp":
        return LoadStep("ramp", rate=a, ramp_to=float(b)) if b is not None else None
    if b is not None:
        return None
    if match["kind"] == "rate":
        return LoadStep("open", rate=a)
    return LoadStep("closed", concurrency=int(a)) if a.is_integer() else None


@dataclass(frozen=True)
class RunConfig:
    """The run's config as summary.json records it (`LoadConfig.to_dict` plus the target and
    model), with typed readings of the keys the readers use."""

    data: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return text(self.data.get("name"))

    @property
    def url(self) -> str | None:
        return text(self.data.get("url"))

    @property
    def launch(self) -> tuple[str, ...] | None:
        """The `capplan serve` options the run launched its server with; None: not launched."""
        launch = self.data.get("launch")
        return None if launch is None else texts(launch)

    @property
    def endpoint(self) -> str | None:
        return text(self.data.get("endpoint"))

    @property
    def stream(self) -> bool | None:
        stream = self.data.get("stream")
        return stream if isinstance(stream, bool) else None

    @property
    def load_model(self) -> str | None:
        return text(self.data.get("load_model"))

    @property
    def step_labels(self) -> tuple[str, ...]:
        return texts(self.data.get("steps"))

    @property
    def concurrency(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self._numbers("concurrency"))

    @property
    def rate(self) -> tuple[float, ...]:
        return self._numbers("rate")

    @property
    def ramp(self) -> tuple[float, float] | None:
        ramp = self._numbers("ramp")
        return (ramp[0], ramp[1]) if len(ramp) == 2 else None

    @property
    def slo(self) -> Slo:
        slo = mapping(self.data.get("slo"))
        return Slo(**{k: number(slo.get(k)) for k in ("ttft_ms", "tpot_ms", "e2e_ms")})

    @property
    def load_steps(self) -> tuple[LoadStep, ...]:
        """The ladder the config describes, by the same rule a `LoadConfig` runs it."""
        return tuple(LoadConfig(concurrency=self.concurrency, rate=self.rate, ramp=self.ramp).steps)

    def token_count(self, key: str) -> int | None:
        """`prompt_tokens` or `max_tokens` when the config fixed it; None for a distribution."""
        return count(mapping(self.data.get(key)).get("value"))

    def differing(self, other: RunConfig, keys: tuple[str, ...]) -> list[str]:
        """The `keys` this config sets to another value than `other` does."""
        return [k for k in keys if k in self.data and self.data.get(k) != other.data.get(k)]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def _numbers(self, key: str) -> tuple[float, ...]:
        values = self.data.get(key)
        items = values if isinstance(values, list | tuple) else ()
        return tuple(n for v in items if (n := number(v)) is not None)


@dataclass(frozen=True)
class StepSummary:
    """One ladder step's block (or a ladder's `overall`): figures over its measured requests."""

    step: str = ""  # the label: `concurrency=4`, `rate=2`, `ramp=1-10`, `overall`
    load: LoadStep | None = None  # the step's load as numbers; None when unknown (or overall)
    requests: Requests = field(default_factory=Requests)
    error_rate: float | None = None
    ttft_ms: Stats = field(default_factory=Stats)
    tpot_ms: Stats = field(default_factory=Stats)
    itl_ms: Stats = field(default_factory=Stats)
    e2e_ms: Stats = field(default_factory=Stats)
    latency_ms: Stats | None = None  # open loop: from the intended start
    generator_lag_ms: Stats | None = None  # open loop: how far sends fell behind the schedule
    tokens: Tokens = field(default_factory=Tokens)
    throughput: Throughput = field(default_factory=Throughput)
    goodput: Goodput = field(default_factory=Goodput)
    client: ClientCheck | None = None
    window: Window | None = None  # None before schema 1.2 and in `overall`
    retries: Retries | None = None
    valid: bool = True
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    load_model_run: LoadModelRun | None = None

    @classmethod
    def from_dict(cls, value: Mapping[str, Any], *, label: str = "") -> StepSummary:
        reasons = texts(value.get("reasons"))
        valid = value.get("valid")
        client = value.get("client")
        return cls(
            step=str(value.get("step") or value.get("label") or label),
            load=load_from_dict(value.get("load")),
            requests=Requests.from_dict(value.get("requests")),
            error_rate=number(value.get("error_rate")),
            ttft_ms=Stats.from_dict(value.get("ttft_ms")),
            tpot_ms=Stats.from_dict(value.get("tpot_ms")),
            itl_ms=Stats.from_dict(value.get("itl_ms")),
            e2e_ms=Stats.from_dict(value.get("e2e_ms")),
            latency_ms=_optional_stats(value.get("latency_ms")),
            generator_lag_ms=_optional_stats(value.get("generator_lag_ms")),
            tokens=Tokens.from_dict(value.get("tokens")),
            throughput=Throughput.from_dict(value.get("throughput")),
            goodput=Goodput.from_dict(value.get("goodput")),
            client=ClientCheck.from_dict(client) if isinstance(client, Mapping) else None,
            window=Window.from_dict(value.get("window")),
            retries=Retries.from_dict(value.get("retries")),
            # Not recorded: valid unless it gives reasons, as `summarize` decides it.
            valid=valid if isinstance(valid, bool) else not reasons,
            reasons=reasons,
            notes=texts(value.get("notes")),
            load_model_run=LoadModelRun.from_dict(value.get("load_model_run")),
        )

    @property
    def open_loop(self) -> bool:
        return self.latency_ms is not None

    def latency(self, name: str) -> Stats | None:
        """A latency block by its summary.json name (`ttft_ms`...); None when the step has none."""
        if name not in LATENCY_BLOCKS:
            raise KeyError(name)
        stats: Stats | None = getattr(self, name)
        return stats

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step}
        if self.load is not None:
            out["load"] = load_to_dict(self.load)
        out["requests"] = self.requests.to_dict()
        out["error_rate"] = self.error_rate
        for name in LATENCY_BLOCKS:
            stats = self.latency(name)
            if stats is not None:
                out[name] = stats.to_dict()
        out["tokens"] = self.tokens.to_dict()
        out["throughput"] = self.throughput.to_dict()
        out["goodput"] = self.goodput.to_dict()
        if self.client is not None:
            out["client"] = self.client.to_dict()
        if self.window is not None:
            out["window"] = self.window.to_dict()
        if self.retries is not None:
            out["retries"] = self.retries.to_dict()
        out["valid"] = self.valid
        out["reasons"] = list(self.reasons)
        out["notes"] = list(self.notes)
        if self.load_model_run is not None:
            out["load_model_run"] = self.load_model_run.to_dict()
        return out


def _optional_stats(value: object) -> Stats | None:
    return Stats.from_dict(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class RunSummary:
    """A whole run's summary.json: its steps (one for a single-step run), a ladder's `overall`,
    validity, and what the engine recorded beside the figures."""

    steps: tuple[StepSummary, ...] = (StepSummary(),)
    overall: StepSummary | None = None  # a ladder's whole run (rungs mixed)
    schema_version: str = SCHEMA_VERSION  # of the shape `to_dict` writes; older files upgraded
    run_id: str | None = None
    engine: str | None = None
    config: RunConfig = field(default_factory=RunConfig)
    environment: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    stopped: Stopped | None = None  # the run stopped early on a broken target
    valid: bool = True
    reasons: tuple[str, ...] = ()
    started_at: float | None = None
    ended_at: float | None = None
    server_view: ServerView | None = None
    engine_blocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. `locust`
    rebuilt: str | None = None  # set when `capplan report` rebuilt it from the records

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """Any summary.json: a single step's block at the top level, a ladder with `overall`,
        old (`schema_version` 1) and partial files alike."""
        config = RunConfig(dict(mapping(data.get("config"))))
        blocks = [b for b in _list(data.get("steps")) if isinstance(b, Mapping)]
        several = len(blocks) > 1
        steps = tuple(
            StepSummary.from_dict(b, label=str(i) if several else "") for i, b in enumerate(blocks)
        ) or (StepSummary.from_dict(data),)  # an old single-step file: its block at the top
        if _version(data.get("schema_version")) < (1, 1):
            steps = _with_loads(steps, config)
        reasons = texts(data.get("reasons"))
        valid = data.get("valid")
        return cls(
            steps=steps,
            overall=_overall(data, ladder=several),
            run_id=text(data.get("run_id")),
            engine=text(data.get("engine")),
            config=config,
            environment=dict(mapping(data.get("environment"))),
            interrupted=bool(data.get("interrupted", False)),
            stopped=Stopped.from_dict(data.get("stopped")),
            valid=valid if isinstance(valid, bool) else not reasons,
            reasons=reasons,
            started_at=number(data.get("started_at")),
            ended_at=number(data.get("ended_at")),
            server_view=ServerView.from_dict(data.get("server_view")),
            engine_blocks={
                name: dict(data[name])
                for name in ENGINE_BLOCKS
                if isinstance(data.get(name), Mapping)
            },
            rebuilt=text(data.get("rebuilt")),
        )

    @property
    def is_ladder(self) -> bool:
        return len(self.steps) > 1

    @property
    def whole(self) -> StepSummary:
        """The figures of the whole run: the single step's, or a ladder's `overall` (which mixes
        rungs: judge a ladder's latency step by step)."""
        return self.overall if self.overall is not None and self.is_ladder else self.steps[0]

    def steps_by_label(self) -> dict[str, StepSummary]:
        return {s.step: s for s in self.steps}

    def client_checks(self) -> dict[str, ClientCheck]:
        """Each step's client self-check, by step label."""
        return {s.step: s.client for s in self.steps if s.client is not None}

    def load_model_runs(self) -> dict[str, LoadModelRun]:
        return {s.step: s.load_model_run for s in self.steps if s.load_model_run is not None}

    def to_dict(self) -> dict[str, Any]:
        """summary.json, in the layout `summarize` writes."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "engine": self.engine,
            "config": self.config.to_dict(),
            "environment": dict(self.environment),
            "interrupted": self.interrupted,
        }
        if self.is_ladder and self.overall is not None:
            out["overall"] = self.overall.to_dict()
            out["requests"] = self.overall.requests.to_dict()
        elif not self.is_ladder:
            block = self.steps[0].to_dict()
            out.update({k: v for k, v in block.items() if k != "step"})
            out["step"] = block["step"]
        out["steps"] = [s.to_dict() for s in self.steps]
        if self.stopped is not None:
            out["stopped"] = self.stopped.to_dict()
        out["valid"] = self.valid
        out["reasons"] = list(self.reasons)
        if self.started_at is not None:
            out["started_at"] = self.started_at
        if self.ended_at is not None:
            out["ended_at"] = self.ended_at
        if self.server_view is not None:
            out["server_view"] = self.server_view.to_dict()
        out.update({name: dict(block) for name, block in self.engine_blocks.items()})
        if self.rebuilt is not None:
            out["rebuilt"] = self.rebuilt
        return out


def _overall(data: Mapping[str, Any], *, ladder: bool) -> StepSummary | None:
    """A ladder's `overall`; in a ladder without one, its top-level figures are the whole run's."""
    overall = data.get("overall")
    if isinstance(overall, Mapping):
        return StepSummary.from_dict(overall, label="overall")
    return StepSummary.from_dict(data, label="overall") if ladder else None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _version(value: object) -> tuple[int, int]:
    """`"1.1"` -> (1, 1); the integer 1 of the first files, or none at all, -> (1, 0)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, 0)
    major, _, minor = str(value).partition(".")
    if major.isdigit():
        return (int(major), int(minor) if minor.isdigit() else 0)
    return (1, 0)


def _with_loads(steps: tuple[StepSummary, ...], config: RunConfig) -> tuple[StepSummary, ...]:
    """Pre-1.1 steps with their load: from the config's ladder, else read from the label."""
    planned = {s.label: s for s in config.load_steps}
    return tuple(
        s if s.load is not None else replace(s, load=planned.get(s.step) or load_from_label(s.step))
        for s in steps
    )
