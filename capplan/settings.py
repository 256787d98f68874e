"""The server-settings contract: what `capplan estimate --emit` writes and `capplan serve` reads.

One dataclass, `ServerSettings`, holds every setting with its default, unit and help. From it
follow the JSON key (the field name), the environment variable (`CAPPLAN_` + upper case), the
flag (`--` + the key without its unit suffix `_s`, dashes for underscores: `queue_timeout_s` ->
`--queue-timeout`), the three file formats `--emit` writes (JSON, env lines, gunicorn.conf.py)
and how each layer is read back. Precedence in `capplan serve`: flag > environment > `--config`
file > default. Docs: docs/architecture.md ("server settings").
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from capplan.errors import InputError

ENV_PREFIX = "CAPPLAN_"
EMIT_FORMATS = ("env", "gunicorn", "json")


def _setting(default: Any, help: str, *, unit: str = "", emit: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "unit": unit, "emit": emit})


@dataclass(frozen=True)
class ServerSettings:
    """Every setting of the reference server, with its default. `sources` is provenance."""

    # where and how
    host: str = _setting("127.0.0.1", "Bind address.")
    port: int = _setting(8000, "Port; 0 picks a free one.")
    backend: str = _setting("transformers", "transformers or emulated.")
    model: str | None = _setting(None, "Local model dir; default: the embedded tiny model.")
    device: str | None = _setting(None, "cuda, cuda:N or cpu; default: cuda if any.")
    server: str = _setting("uvicorn", "uvicorn or gunicorn.")
    workers: int = _setting(1, "gunicorn worker processes.", emit=True)
    threads: int = _setting(1, "gunicorn threads per worker.", emit=True)
    api_key: str | None = _setting(None, "Require Authorization: Bearer <key>.")
    forwarded_allow_ips: str | None = _setting(
        None, "Proxies (IPs or networks, comma-separated, or *) whose X-Forwarded-For/-Proto is "
        "trusted; default: none, the peer address is the client."
    )  # fmt: skip
    # connections (per process)
    max_connections: int | None = _setting(
        None,
        "Open connections per process, 503 beyond; default: what the open-file limit "
        "allows (less 64 and the listen backlog).",
    )
    header_timeout_s: float = _setting(
        10.0, "Longest wait for a request's headers (408 and close beyond).", unit="s"
    )
    body_timeout_s: float = _setting(
        30.0, "Longest wait for a request's body once its headers arrived (408).", unit="s"
    )
    # admission control
    max_body_bytes: int = _setting(
        4 * 1024 * 1024, "Largest request body (413 beyond).", unit="bytes"
    )
    max_prompt_chars: int | None = _setting(
        None, "Longest prompt, refused (400) before tokenizing; default: the context x the "
        "vocabulary's longest token x 4.", unit="chars",
    )  # fmt: skip
    max_concurrent: int = _setting(4, "Requests generating at once.", emit=True)
    queue_size: int = _setting(16, "Requests waiting for a slot.", emit=True)
    queue_timeout_s: float = _setting(30.0, "Longest wait in the queue.", unit="s", emit=True)
    request_timeout_s: float = _setting(
        300.0, "Longest generation before 504.", unit="s", emit=True
    )
    max_tokens_cap: int = _setting(1024, "Largest max_tokens served.", unit="tokens", emit=True)
    max_context: int | None = _setting(
        None, "Prompt + max_tokens limit; default: the model's.", unit="tokens", emit=True
    )
    strict: bool = _setting(False, "422 for max_tokens over the cap instead of clamping.")
    rate_limit: str | None = _setting(None, "Per client, e.g. '10/minute;100/hour'.", emit=True)
    rate_limit_storage: str = _setting(
        "memory://", "limits storage URI: memory:// (per worker) or redis://host:port (shared)."
    )
    vram_guard: float | None = _setting(
        0.95, "Refuse above this fraction of VRAM (cuda only).", unit="fraction", emit=True
    )
    drain_timeout_s: float = _setting(30.0, "Time to finish work on SIGTERM.", unit="s", emit=True)
    # the transformers backend's engine
    engine: str = _setting("auto", "fixed (a KV pool fixed at start); auto: fixed on every device.")
    max_batch: int = _setting(8, "Requests decoded in one batch.", emit=True)
    batch_wait_ms: float = _setting(5.0, "Wait to fill a batch.", unit="ms", emit=True)
    kv_cache_memory: int | None = _setting(
        None,
        "KV cache allocated at start; default: from --gpu-memory-utilization on cuda, room for "
        "max_batch full-context requests (at most 4 GiB) on cpu.",
        unit="bytes",
        emit=True,
    )
    gpu_memory_utilization: float | None = _setting(
        None,
        "Share of the GPU for weights, KV cache and workspace when --kv-cache-memory is not "
        "set (cuda; default 0.9).",
        unit="fraction",
    )
    prefill_chunk_tokens: int | None = _setting(
        None,
        "Prompt tokens per prefill forward: while prompts join, a running stream waits at most "
        "one decode step plus one chunk; default 2048 on cuda, 512 on cpu.",
        unit="tokens",
        emit=True,
    )
    # emulated backend
    gpu: str | None = _setting(None, "Emulated: catalog GPU id for roofline timing.")
    emulated_model: str | None = _setting(None, "Emulated: catalog model id.")
    calibration: str | None = _setting(
        None, "Emulated: a `capplan calibrate` profile for the --gpu/--emulated-model timing."
    )
    ttft_ms: float | None = _setting(None, "Emulated: exact time to first token.", unit="ms")
    tpot_ms: float | None = _setting(None, "Emulated: exact time per output token.", unit="ms")
    tokens_per_chunk: int = _setting(1, "Emulated: tokens per SSE chunk.")
    # provenance (not a setting): which layer each non-default value came from
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def values(self) -> dict[str, Any]:
        """All settings as plain values, without provenance."""
        return {name: getattr(self, name) for name in setting_names()}

    def emitted(self) -> dict[str, Any]:
        """The settings `capplan estimate --emit` decides, as plain values."""
        return {spec.key: getattr(self, spec.key) for spec in specs() if spec.emit}

    def to_json(self) -> str:
        return json.dumps(self.values())


@dataclass(frozen=True)
class SettingSpec:
    """One setting as every layer names it."""

    key: str  # JSON key and dataclass field
    kind: type  # int, float, str or bool
    optional: bool  # None is a value ("none"/"null" in text)
    default: Any
    unit: str
    help: str
    emit: bool  # written by `capplan estimate --emit`

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> str:
        name = self.key[: -len("_s")] if self.unit == "s" and self.key.endswith("_s") else self.key
        return "--" + name.replace("_", "-")

    @property
    def help_with_unit(self) -> str:
        units = {"s": "seconds", "ms": "milliseconds"}
        return f"{self.help} ({units.get(self.unit, self.unit)})" if self.unit else self.help


def specs() -> list[SettingSpec]:
    """Every setting, in declaration order."""
    hints = get_type_hints(ServerSettings)
    out = []
    for f in fields(ServerSettings):
        if f.name == "sources":
            continue
        hint = hints[f.name]
        args = [a for a in getattr(hint, "__args__", (hint,)) if a is not type(None)]
        out.append(
            SettingSpec(
                key=f.name,
                kind=args[0],
                optional=len(args) < len(getattr(hint, "__args__", (hint,))),
                default=f.default,
                unit=f.metadata["unit"],
                help=f.metadata["help"],
                emit=f.metadata["emit"],
            )
        )
    return out


def setting_names() -> list[str]:
    return [f.name for f in fields(ServerSettings) if f.name != "sources"]


def spec_of(key: str) -> SettingSpec:
    for spec in specs():
        if spec.key == key:
            return spec
    raise InputError(f"unknown server setting '{key}'")


def coerce(key: str, value: Any, origin: str) -> Any:
    """A value from a file, the environment or a flag, as the setting's type."""
    spec = spec_of(key)
    if value is None:
        return None
    is_none_text = isinstance(value, str) and value.strip().lower() in ("", "none", "null")
    if is_none_text and spec.optional:
        return None
    kind_name = spec.kind.__name__ + (" or none" if spec.optional else "")
    try:
        if spec.kind is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if spec.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if spec.kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise InputError(f"{origin}: {key} must be {kind_name}, got {value!r}") from None


# --- reading the layers ------------------------------------------------------------------------


def read_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON object, `CAPPLAN_KEY=value` lines or a gunicorn.conf.py (`.py`);
    unknown keys are ignored (`capplan estimate --emit json` adds `source` and may add more)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(
            f"cannot read config file {p}: {exc.strerror}; name an existing file"
        ) from None
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
    names = set(setting_names())
    return {k: coerce(k, v, f"config file {p}") for k, v in raw.items() if k in names}


# gunicorn.conf.py names -> settings, for the few that are not in its `raw_env`.
_GUNICORN_NAMES = {
    "workers": "workers", "threads": "threads", "graceful_timeout": "drain_timeout_s",
}  # fmt: skip


def _read_gunicorn_conf(text: str, path: Path) -> dict[str, Any]:
    """Settings from the gunicorn.conf.py `capplan estimate --emit gunicorn` writes: its literal
    assignments and `raw_env` lines, read with `ast` (the file is never executed)."""
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
    for spec in specs():
        if spec.env in environ:
            out[spec.key] = coerce(spec.key, _unquote(environ[spec.env]), f"environment {spec.env}")
    return out


def resolve(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> ServerSettings:
    """Merge the layers: flag > environment > config file > default. Flags set to None are
    treated as not given. Values are typed, not yet checked for sense (the server does that)."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"file:{config_file}", read_file(config_file)))
    layers.append(("env", read_environment(environ or {})))
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = set(given) - set(setting_names())
    if unknown:
        raise InputError(f"unknown server setting(s): {', '.join(sorted(unknown))}")
    layers.append(("flag", {k: coerce(k, v, spec_of(k).flag) for k, v in given.items()}))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, layer in layers:
        for key, value in layer.items():
            values[key] = value
            sources[key] = origin
    return ServerSettings(**values, sources=sources)


def replace(settings: ServerSettings, **changes: Any) -> ServerSettings:
    return dataclasses.replace(settings, **changes)


# --- writing them (`capplan estimate --emit`) --------------------------------------------------


def _env_value(value: object) -> str:
    # Quoted where a shell would split (the rate limit's ';'), so the file can be `source`d.
    text = "none" if value is None else str(value)
    return f'"{text}"' if any(ch in text for ch in ";# ") else text


def env_lines(values: Mapping[str, Any]) -> list[str]:
    return [f"{spec_of(key).env}={_env_value(value)}" for key, value in values.items()]


def render(values: Mapping[str, Any], fmt: str, source: str) -> str:
    """`values` (setting key -> value) as an env file, JSON object or gunicorn.conf.py."""
    check_emit_format(fmt)
    if fmt == "env":
        return f"# {source}\n" + "\n".join(env_lines(values)) + "\n"
    if fmt == "json":
        return json.dumps({**values, "source": source}, indent=2) + "\n"
    # gunicorn's `timeout` kills a silent worker: it must outlast a queued request's wait plus
    # its own generation, or a long request takes the worker (and the model) down with it.
    queue = values.get("queue_timeout_s", ServerSettings.queue_timeout_s)
    request = values.get("request_timeout_s", ServerSettings.request_timeout_s)
    worker_timeout = queue + request + 30
    raw_env = ",\n".join(f"    {line!r}" for line in env_lines(values))
    return (
        f'"""gunicorn config: {source}."""\n\n'
        f"workers = {values.get('workers', ServerSettings.workers)}\n"
        f"threads = {values.get('threads', ServerSettings.threads)}\n"
        'worker_class = "uvicorn.workers.UvicornWorker"\n'
        f"timeout = {worker_timeout}\n"
        f"graceful_timeout = {values.get('drain_timeout_s', ServerSettings.drain_timeout_s)}\n"
        f"raw_env = [\n{raw_env},\n]\n"
    )


def check_emit_format(fmt: str) -> None:
    if fmt not in EMIT_FORMATS:
        raise InputError(f"unknown --emit format '{fmt}'; choose env, gunicorn or json")


def write(values: Mapping[str, Any], fmt: str, path: Path, source: str) -> None:
    text = render(values, fmt, source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path} ({exc.strerror}); choose another FILE") from None
