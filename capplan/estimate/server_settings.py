"""`--emit env|gunicorn|json FILE`: the server-settings contract (docs/architecture.md).

Keys are lower case in JSON and `CAPPLAN_` + upper case in the environment.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from capplan.errors import InputError
from capplan.estimate.result import ServerSettings

EMIT_FORMATS = ("env", "gunicorn", "json")
ENV_PREFIX = "CAPPLAN_"


def settings_dict(settings: ServerSettings, source: str) -> dict[str, Any]:
    return {**asdict(settings), "source": source}


def _env_value(value: object) -> str:
    # Quoted where a shell would split (the rate limit's ';'), so the file can be `source`d.
    text = str(value)
    return f'"{text}"' if any(ch in text for ch in ";# ") else text


def env_lines(settings: ServerSettings) -> list[str]:
    return [
        f"{ENV_PREFIX}{key.upper()}={_env_value(value)}" for key, value in asdict(settings).items()
    ]


def env_text(settings: ServerSettings, source: str) -> str:
    return f"# {source}\n" + "\n".join(env_lines(settings)) + "\n"


def json_text(settings: ServerSettings, source: str) -> str:
    return json.dumps(settings_dict(settings, source), indent=2) + "\n"


def gunicorn_text(settings: ServerSettings, source: str) -> str:
    # gunicorn's `timeout` kills a silent worker: it must outlast a queued request's wait plus
    # its own generation, or a long request takes the worker (and the model) down with it.
    worker_timeout = settings.queue_timeout_s + settings.request_timeout_s + 30
    raw_env = ",\n".join(f"    {line!r}" for line in env_lines(settings))
    return (
        f'"""gunicorn config: {source}."""\n\n'
        f"workers = {settings.workers}\n"
        f"threads = {settings.threads}\n"
        'worker_class = "uvicorn.workers.UvicornWorker"\n'
        f"timeout = {worker_timeout}\n"
        f"graceful_timeout = {settings.drain_timeout_s}\n"
        f"raw_env = [\n{raw_env},\n]\n"
    )


def check_emit_format(fmt: str) -> None:
    if fmt not in EMIT_FORMATS:
        raise InputError(f"unknown --emit format '{fmt}'; choose env, gunicorn or json")


def render_settings(settings: ServerSettings, fmt: str, source: str) -> str:
    check_emit_format(fmt)
    if fmt == "env":
        return env_text(settings, source)
    if fmt == "json":
        return json_text(settings, source)
    return gunicorn_text(settings, source)


def write_settings(settings: ServerSettings, fmt: str, path: Path, source: str) -> None:
    text = render_settings(settings, fmt, source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path} ({exc.strerror}); choose another FILE") from None
