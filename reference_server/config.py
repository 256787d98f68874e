"""Server settings and where they come from: flag > environment `CAPPLAN_*` > `--config` file >
default.

The config file is what `capplan estimate --emit json|env|gunicorn` writes: a JSON object,
`CAPPLAN_KEY=value` lines, or a gunicorn.conf.py (its `raw_env`, `workers`, `threads`). Keys
are the field names below (lower case; environment variables are `CAPPLAN_` + upper case).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from capplan.errors import InputError

ENV_PREFIX = "CAPPLAN_"


@dataclass(frozen=True)
class ServerConfig:
    # where and how
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "transformers"  # "transformers" | "emulated"
    model: str | None = None  # local model directory (transformers); None: embedded tiny model
    device: str | None = None  # None: cuda when available, else cpu
    server: str = "uvicorn"  # "uvicorn" | "gunicorn"
    workers: int = 1
    threads: int = 1
    api_key: str | None = None
    # admission control
    max_body_bytes: int = 4 * 1024 * 1024
    max_concurrent: int = 4
    queue_size: int = 16
    queue_timeout_s: float = 30.0
    request_timeout_s: float = 300.0
    max_tokens_cap: int = 1024
    max_context: int | None = None  # None: the backend's own context length
    strict: bool = False  # max_tokens above the cap: 422 instead of clamping
    rate_limit: str | None = None  # e.g. "10/minute;100/hour"
    rate_limit_storage: str = "memory://"  # redis://host:6379 shares counters across workers
    vram_guard: float | None = 0.95  # fraction of device memory; applies on cuda only
    drain_timeout_s: float = 30.0
    # batching (transformers backend)
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    # emulated backend
    gpu: str | None = None  # catalog GPU id for roofline timing
    emulated_model: str | None = None  # catalog model id for roofline timing
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    tokens_per_chunk: int = 1
    # provenance (not a setting): which layer each non-default value came from
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def settings(self) -> dict[str, Any]:
        """All settings as plain values, without provenance."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}

    def to_json(self) -> str:
        return json.dumps(self.settings())


def setting_names() -> list[str]:
    return [f.name for f in fields(ServerConfig) if f.name != "sources"]


def _types() -> dict[str, Any]:
    return get_type_hints(ServerConfig)


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a value from a file, the environment or a flag into the field's type."""
    hint = _types()[name]
    text_hint = str(hint)
    if value is None:
        return None
    is_none_text = isinstance(value, str) and value.strip().lower() in ("", "none", "null")
    if is_none_text and "None" in text_hint:
        return None
    try:
        if "bool" in text_hint:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if "int" in text_hint and "float" not in text_hint:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if "float" in text_hint:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise InputError(f"{origin}: {name} must be {text_hint}, got {value!r}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON object, `CAPPLAN_KEY=value` lines or a gunicorn.conf.py (`.py`);
    unknown keys are ignored (`capplan estimate --emit json` adds `source` and may add more)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(
            f"cannot read config file {p}: {exc.strerror}; name an existing file"
        ) from None
    names = set(setting_names())
    raw: dict[str, Any] = {}
    if p.suffix == ".py":
        raw = _read_gunicorn_conf(text, p)
    elif text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"config file {p} is not valid JSON: {exc.msg} (line {exc.lineno})"
            ) from None
        raw = {k.lower(): v for k, v in data.items()}
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :]
            key, sep, value = line.partition("=")
            if not sep:
                raise InputError(f"config file {p} line {lineno}: expected KEY=value")
            key = key.strip()
            if key.upper().startswith(ENV_PREFIX):
                key = key[len(ENV_PREFIX) :]
            raw[key.lower()] = _unquote(value.strip())
    return {k: _coerce(k, v, f"config file {p}") for k, v in raw.items() if k in names}


# gunicorn.conf.py names -> settings, for the few that are not in its `raw_env`.
_GUNICORN_NAMES = {
    "workers": "workers", "threads": "threads", "graceful_timeout": "drain_timeout_s",
}  # fmt: skip


def _read_gunicorn_conf(text: str, path: Path) -> dict[str, Any]:
    """Settings from the gunicorn.conf.py `capplan estimate --emit gunicorn` writes: its literal
    assignments and `raw_env` lines, read with `ast` (the file is never executed)."""
    import ast

    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise InputError(
            f"config file {path} is not valid Python: {exc.msg} (line {exc.lineno})"
        ) from None
    raw: dict[str, Any] = {}
    env_lines: list[str] = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            continue  # computed values (e.g. multiprocessing.cpu_count()) are gunicorn's own
        if target.id == "raw_env" and isinstance(value, (list, tuple)):
            env_lines.extend(str(item) for item in value)
        elif target.id in _GUNICORN_NAMES:
            raw[_GUNICORN_NAMES[target.id]] = value
    for line in env_lines:
        key, sep, value = line.partition("=")
        if sep and key.upper().startswith(ENV_PREFIX):
            raw[key[len(ENV_PREFIX) :].lower()] = _unquote(value.strip())
    return raw


def _unquote(value: str) -> str:
    """`"10/minute;100/hour"` -> `10/minute;100/hour`: env files and gunicorn's `raw_env`
    keep the quotes a shell would remove."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in setting_names():
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = _coerce(name, _unquote(environ[key]), f"environment {key}")
    return out


def resolve_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> ServerConfig:
    """Merge the layers: flag > environment > config file > default. Flags set to None are
    treated as not given."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"file:{config_file}", read_config_file(config_file)))
    layers.append(("env", read_environment(environ or {})))
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = set(given) - set(setting_names())
    if unknown:
        raise InputError(f"unknown server setting(s): {', '.join(sorted(unknown))}")
    flag_values = {k: _coerce(k, v, f"--{k.replace('_', '-')}") for k, v in given.items()}
    layers.append(("flag", flag_values))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, layer in layers:
        for key, value in layer.items():
            values[key] = value
            sources[key] = origin
    config = ServerConfig(**values, sources=sources)
    validate(config)
    return config


def validate(config: ServerConfig) -> None:
    """Reject settings that cannot work, with a message naming the fix."""
    if config.backend not in ("transformers", "emulated"):
        raise InputError(f"backend must be transformers or emulated, got {config.backend!r}")
    if config.server not in ("uvicorn", "gunicorn"):
        raise InputError(f"server must be uvicorn or gunicorn, got {config.server!r}")
    positive = ("max_concurrent", "workers", "threads", "max_tokens_cap", "max_batch",
                "max_body_bytes", "tokens_per_chunk")  # fmt: skip
    for name in positive:
        if getattr(config, name) < 1:
            raise InputError(f"{name} must be at least 1, got {getattr(config, name)}")
    non_negative = ("queue_size", "queue_timeout_s", "request_timeout_s", "drain_timeout_s",
                    "batch_wait_ms")  # fmt: skip
    for name in non_negative:
        if getattr(config, name) < 0:
            raise InputError(f"{name} must be 0 or more, got {getattr(config, name)}")
    if config.vram_guard is not None and not 0 < config.vram_guard <= 1:
        raise InputError(f"vram_guard is a fraction in (0, 1], got {config.vram_guard}")
    if config.max_context is not None and config.max_context < 2:
        raise InputError(f"max_context must be at least 2, got {config.max_context}")
    if not 0 < config.port < 65536 and config.port != 0:
        raise InputError(f"port must be in 0..65535, got {config.port}")
    if config.rate_limit:
        from reference_server.rate_limit import check_storage, parse_rate_limit

        parse_rate_limit(config.rate_limit)
        check_storage(config.rate_limit_storage)


def replace(config: ServerConfig, **changes: Any) -> ServerConfig:
    """A copy with `changes` applied (validated)."""
    new = dataclasses.replace(config, **changes)
    validate(new)
    return new


# Where each limit applies when several worker processes serve: a worker owns its gate, queue
# and batch; rate-limit counters are shared only through a shared storage URI.
_PER_REQUEST = ("queue_timeout_s", "request_timeout_s", "max_tokens_cap", "max_context",
                "max_body_bytes", "strict")  # fmt: skip
_PER_WORKER = ("max_concurrent", "queue_size", "max_batch", "batch_wait_ms")


@dataclass(frozen=True)
class LimitInForce:
    name: str
    value: Any
    scope: str  # "per request" | "per worker" | "shared" | "per process"
    source: str  # "flag" | "env" | "file:PATH" | "default"


def limits_in_force(config: ServerConfig) -> list[LimitInForce]:
    """The admission limits `capplan serve` reports at start, with their scope and origin."""
    from reference_server.rate_limit import shared_storage

    multi = config.server == "gunicorn" and config.workers > 1
    out: list[LimitInForce] = []

    def add(name: str, scope: str) -> None:
        source = config.sources.get(name, "default")
        out.append(LimitInForce(name, getattr(config, name), scope, source))

    for name in _PER_WORKER:
        scope = "server"
        if multi and name in ("max_concurrent", "queue_size"):
            total = config.workers * getattr(config, name)
            scope = f"per worker ({config.workers} workers: {total} in all)"
        elif multi:
            scope = "per worker"
        add(name, scope)
    for name in _PER_REQUEST:
        add(name, "per request")
    if config.rate_limit:
        if not multi:
            scope = "per client"
        elif shared_storage(config.rate_limit_storage):
            scope = f"per client, shared by all workers ({config.rate_limit_storage})"
        else:
            scope = f"per client, per worker (memory://: up to {config.workers}x in all)"
        add("rate_limit", scope)
    if config.backend == "emulated":
        guard_scope = "not applied (emulated: no GPU)"
    elif config.device == "cpu":
        guard_scope = "not applied (cpu)"
    else:
        guard_scope = "on cuda only" + (" (every worker sees the same GPU)" if multi else "")
    add("vram_guard", guard_scope)
    add("drain_timeout_s", "server")
    return out
