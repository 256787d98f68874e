"""Workload scenarios: a TOML file of flat keys, each of which a command-line flag can override.

The key `prompt_tokens` is the flag `--prompt-tokens`; durations read `60s`, `2m`, `500ms` or a
number of seconds; `warmup` also reads `1r` (each user's first request). The full key list is
`SCENARIO_KEYS`; docs/metrics.md explains the load models and a step's window.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from capplan.errors import InputError
from capplan.loadtest.distributions import TokenDistribution, parse_distribution
from capplan.units import parse_seconds

ENDPOINTS = ("completions", "chat")
ARRIVALS = ("constant", "poisson", "gamma")
SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"


@dataclass(frozen=True)
class Slo:
    """Per-request service level objectives; a request meeting all set ones counts as goodput."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def is_set(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))


# A step is measured once this many requests started after its warmup have completed, unless
# `min_requests` says otherwise: a closed loop's concurrency (one per user), an open loop's 1.
OPEN_LOOP_MIN_REQUESTS = 1


@dataclass(frozen=True)
class LoadStep:
    """One rung of a ladder: closed loop at a concurrency, open loop at a rate, or a rate ramp."""

    kind: str  # "closed" | "open" | "ramp"
    concurrency: int = 0
    rate: float = 0.0
    ramp_to: float = 0.0

    @property
    def label(self) -> str:
        if self.kind == "closed":
            return f"concurrency={self.concurrency}"
        if self.kind == "open":
            return f"rate={self.rate:g}"
        return f"ramp={self.rate:g}-{self.ramp_to:g}"

    def min_requests(self, configured: int | None) -> int:
        """Measured requests this step needs before it may end (`--min-requests`, or default)."""
        if configured is not None:
            return configured
        return self.concurrency if self.kind == "closed" else OPEN_LOOP_MIN_REQUESTS


@dataclass(frozen=True)
class LoadConfig:
    name: str = "adhoc"
    description: str = ""
    url: str | None = None
    launch: tuple[str, ...] | None = None  # `capplan serve` options; None: do not launch
    endpoint: str = "completions"
    model_name: str | None = None  # the request's "model"; None: first id from /v1/models
    stream: bool = True
    include_usage: bool = True
    ignore_eos: bool = False  # vLLM/TGI extension, so every answer runs to max_tokens
    temperature: float | None = None
    prompt_tokens: TokenDistribution = field(default_factory=lambda: TokenDistribution(value=128))
    max_tokens: TokenDistribution = field(default_factory=lambda: TokenDistribution(value=128))
    prompt_file: str | None = None
    tokenizer: str | None = None  # "embedded", a local tokenizer directory, or None
    concurrency: tuple[int, ...] = ()
    rate: tuple[float, ...] = ()
    arrival: str = "poisson"
    burstiness: float = 1.0
    ramp: tuple[float, float] | None = None
    requests: int | None = None  # per step
    duration_s: float | None = None  # per step
    warmup_s: float = 0.0
    warmup_requests: int = 0  # per user (closed loop) or the step's first arrivals (open loop)
    min_requests: int | None = None  # measured per step before it may end; None: see LoadStep
    stagger_s: float = 0.0  # closed loop: workers' first requests spread over this long
    backoff: bool = True  # closed loop: after a 429/503 wait and retry, as the OpenAI clients do
    max_retries: int = 2  # closed loop: resends of one refused request (openai-python's default)
    timeout_s: float = 120.0
    slo: Slo = field(default_factory=Slo)
    seed: int = 0
    api_key: str | None = None

    @property
    def steps(self) -> list[LoadStep]:
        if self.ramp is not None:
            return [LoadStep("ramp", rate=self.ramp[0], ramp_to=self.ramp[1])]
        if self.rate:
            return [LoadStep("open", rate=r) for r in self.rate]
        return [LoadStep("closed", concurrency=c) for c in (self.concurrency or (1,))]

    @property
    def open_loop(self) -> bool:
        return bool(self.rate) or self.ramp is not None

    def to_dict(self) -> dict[str, Any]:
        """The full config as summary.json records it (no API key)."""
        data = asdict(self)
        data["prompt_tokens"] = self.prompt_tokens.to_dict()
        data["max_tokens"] = self.max_tokens.to_dict()
        data["launch"] = list(self.launch) if self.launch is not None else None
        data["concurrency"] = list(self.concurrency)
        data["rate"] = list(self.rate)
        data["ramp"] = list(self.ramp) if self.ramp else None
        data["api_key"] = "***" if self.api_key else None
        data["load_model"] = self.steps[0].kind
        data["steps"] = [s.label for s in self.steps]
        data["step_min_requests"] = {s.label: s.min_requests(self.min_requests) for s in self.steps}
        return data


SCENARIO_KEYS = [
    "name",
    "description",
    "url",
    "launch",
    "endpoint",
    "model_name",
    "stream",
    "include_usage",
    "ignore_eos",
    "temperature",
    "prompt_tokens",
    "max_tokens",
    "prompt_file",
    "tokenizer",
    "concurrency",
    "rate",
    "arrival",
    "burstiness",
    "ramp",
    "requests",
    "duration",
    "warmup",
    "min_requests",
    "stagger",
    "backoff",
    "max_retries",
    "timeout",
    "slo",
    "seed",
    "api_key",
]


def find_scenario(path_or_name: str | Path) -> Path:
    """A scenario file by path, or by name from ./scenarios or the repository's scenarios/."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    name = path.name if path.suffix == ".toml" else f"{path.name}.toml"
    for folder in (Path.cwd() / "scenarios", SCENARIO_DIR):
        if (folder / name).is_file():
            return folder / name
    known = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
    raise InputError(
        f"no scenario '{path_or_name}'; give a .toml path or one of: {', '.join(known)}"
    )


def read_scenario(path_or_name: str | Path) -> dict[str, Any]:
    path = find_scenario(path_or_name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"scenario {path}: not valid TOML ({exc})") from None
    data.setdefault("name", path.stem)
    return data


def build_config(
    values: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> LoadConfig:
    """A LoadConfig from scenario keys, then overrides (flag values; None means not given)."""
    merged: dict[str, Any] = dict(values)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "slo" and isinstance(value, Mapping):
            slo = dict(merged.get("slo") or {})
            slo.update({k: v for k, v in value.items() if v is not None})
            merged["slo"] = slo
        else:
            merged[key] = value
    # The key before `backoff`: it only waited out Retry-After; old scenario files keep working.
    if "honor_retry_after" in merged:
        merged.setdefault("backoff", merged.pop("honor_retry_after"))
    unknown = sorted(set(merged) - set(SCENARIO_KEYS))
    if unknown:
        raise InputError(f"unknown scenario key(s) {', '.join(unknown)}; known: {SCENARIO_KEYS}")
    # Choosing a load model on the command line replaces the scenario's other load model.
    given = overrides or {}
    if given.get("rate") is not None or given.get("ramp") is not None:
        merged.pop("concurrency", None)
    if given.get("concurrency") is not None:
        merged.pop("rate", None)
        merged.pop("ramp", None)
    if given.get("rate") is not None:
        merged.pop("ramp", None)
    # So does choosing a target: --url runs against it, --launch starts a server.
    if given.get("url") is not None and given.get("launch") is None:
        merged.pop("launch", None)
    if given.get("launch") is not None and given.get("url") is None:
        merged.pop("url", None)
    return _config_from(merged)


def _config_from(m: dict[str, Any]) -> LoadConfig:
    config = LoadConfig()
    endpoint = str(m.get("endpoint", config.endpoint)).lower()
    if endpoint not in ENDPOINTS:
        raise InputError(f"endpoint '{endpoint}' is not one of: {', '.join(ENDPOINTS)}")
    arrival = str(m.get("arrival", config.arrival)).lower()
    if arrival not in ARRIVALS:
        raise InputError(f"arrival '{arrival}' is not one of: {', '.join(ARRIVALS)}")
    concurrency = tuple(int(c) for c in _number_list(m.get("concurrency"), "concurrency"))
    rate = tuple(_number_list(m.get("rate"), "rate"))
    if concurrency and (rate or m.get("ramp") is not None):
        raise InputError("give either concurrency (closed loop) or rate/ramp (open loop), not both")
    if any(c < 1 for c in concurrency):
        raise InputError("concurrency must be at least 1")
    if any(r <= 0 for r in rate):
        raise InputError("rate must be above 0 requests/s")
    ramp = _ramp(m.get("ramp"))
    requests = _optional_int(m.get("requests"), "requests")
    duration = _optional_seconds(m.get("duration"), "duration")
    if requests is None and duration is None:
        raise InputError("give requests (e.g. --requests 100) or duration (e.g. --duration 60s)")
    if ramp is not None and duration is None:
        raise InputError("a ramp needs a duration, e.g. --duration 60s")
    burstiness = float(m.get("burstiness", 1.0))
    if burstiness <= 0:
        raise InputError("burstiness must be above 0 (1 = Poisson, below 1 = burstier)")
    launch = m.get("launch")
    if launch is False:
        launch = None
    elif launch is True:
        launch = ()
    elif isinstance(launch, str):
        launch = tuple(launch.split())
    elif launch is not None:
        launch = tuple(str(a) for a in launch)
    url = m.get("url")
    if url is None and launch is None:
        raise InputError("give a target: --url http://127.0.0.1:8000 or --launch")
    warmup_s, warmup_requests = _warmup(m.get("warmup"))
    if m.get("warmup") is None and len(concurrency) > 1:
        warmup_requests = 1  # a ladder's steps each open new connections: skip their first round
    min_requests = _optional_int(m.get("min_requests"), "min_requests", minimum=0)
    max_retries = _optional_int(m.get("max_retries"), "max_retries", minimum=0)
    return replace(
        config,
        name=str(m.get("name", config.name)),
        description=str(m.get("description", "")),
        url=str(url).rstrip("/") if url else None,
        launch=launch,
        endpoint=endpoint,
        model_name=m.get("model_name"),
        stream=_bool(m.get("stream", True), "stream"),
        include_usage=_bool(m.get("include_usage", True), "include_usage"),
        ignore_eos=_bool(m.get("ignore_eos", False), "ignore_eos"),
        temperature=float(m["temperature"]) if m.get("temperature") is not None else None,
        prompt_tokens=parse_distribution(m.get("prompt_tokens", 128), name="prompt_tokens"),
        max_tokens=parse_distribution(m.get("max_tokens", 128), name="max_tokens"),
        prompt_file=str(m["prompt_file"]) if m.get("prompt_file") else None,
        tokenizer=str(m["tokenizer"]) if m.get("tokenizer") else None,
        concurrency=concurrency,
        rate=rate,
        arrival=arrival,
        burstiness=burstiness,
        ramp=ramp,
        requests=requests,
        duration_s=duration,
        warmup_s=warmup_s,
        warmup_requests=warmup_requests,
        min_requests=min_requests,
        stagger_s=_optional_seconds(m.get("stagger"), "stagger") or 0.0,
        backoff=_bool(m.get("backoff", True), "backoff"),
        max_retries=config.max_retries if max_retries is None else max_retries,
        timeout_s=_optional_seconds(m.get("timeout"), "timeout") or config.timeout_s,
        slo=_slo(m.get("slo") or {}),
        seed=int(m.get("seed", 0)),
        api_key=m.get("api_key"),
    )


def _optional_seconds(value: object, name: str) -> float | None:
    return None if value is None else parse_seconds(value, name)


def _optional_int(value: object, name: str, *, minimum: int = 1) -> int | None:
    if value is None:
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise InputError(f"{name}: expected a whole number, got '{value}'") from None
    if number < minimum:
        raise InputError(f"{name} must be at least {minimum}")
    return number


_WARMUP_REQUESTS = re.compile(r"\s*(\d+)\s*r(?:equests?)?\s*")


def _warmup(value: object) -> tuple[float, int]:
    """(seconds, requests per user): `5s` is a duration, `1r` each user's first request."""
    if value is None:
        return 0.0, 0
    match = _WARMUP_REQUESTS.fullmatch(str(value))
    if match is not None:
        return 0.0, int(match[1])
    try:
        return parse_seconds(value, "warmup"), 0
    except InputError:
        raise InputError(
            f"warmup: cannot read '{value}'; write a duration (5s) or requests per user (1r)"
        ) from None


def _number_list(value: object, name: str) -> list[float]:
    """`4`, `[1, 4, 16]` or the flag form `1,4,16`."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        items = [items]
    try:
        return [float(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        raise InputError(f"{name}: expected numbers like 1,4,16, got '{value}'") from None


def _ramp(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    parts = value.replace("-", ":").split(":") if isinstance(value, str) else value
    try:
        start, end = (float(p) for p in parts)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise InputError(f"ramp: write START:END requests/s, e.g. 1:20, got '{value}'") from None
    if start < 0 or end <= 0:
        raise InputError("ramp: rates must be >= 0 and end above 0")
    return (start, end)


def _bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{name}: expected true or false, got '{value}'")


def _slo(table: Mapping[str, Any]) -> Slo:
    known = {"ttft_ms", "tpot_ms", "e2e_ms"}
    unknown = set(table) - known
    if unknown:
        raise InputError(f"slo: unknown key(s) {', '.join(sorted(unknown))}; use {sorted(known)}")
    return Slo(**{k: float(v) for k, v in table.items() if v is not None})
