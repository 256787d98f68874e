"""The reference server's settings, checked for sense, and the limits it reports at start.

The settings contract itself (keys, environment names, flags, units, file formats, precedence)
is `capplan.settings`: `capplan estimate --emit` writes it, this server reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capplan import settings as contract
from capplan.errors import InputError
from capplan.settings import ServerSettings


def resolve_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> ServerSettings:
    """The layers merged (flag > environment > config file > default), then checked."""
    config = contract.resolve(flags, environ, config_file)
    validate(config)
    return config


def validate(config: ServerSettings) -> None:
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
    if config.engine not in ("auto", "fixed"):
        raise InputError(f"engine must be auto or fixed, got {config.engine!r}")
    chunk = config.prefill_chunk_tokens
    if chunk is not None and chunk < 1:
        raise InputError(f"prefill_chunk_tokens must be at least 1, got {chunk}")
    if config.kv_cache_memory is not None and config.kv_cache_memory < 1:
        raise InputError(f"kv_cache_memory must be at least 1 byte, got {config.kv_cache_memory}")
    utilization = config.gpu_memory_utilization
    if utilization is not None and not 0 < utilization <= 1:
        raise InputError(f"gpu_memory_utilization is a fraction in (0, 1], got {utilization}")
    if config.vram_guard is not None and not 0 < config.vram_guard <= 1:
        raise InputError(f"vram_guard is a fraction in (0, 1], got {config.vram_guard}")
    for name in ("header_timeout_s", "body_timeout_s"):
        if getattr(config, name) <= 0:
            raise InputError(f"{name} must be above 0, got {getattr(config, name)}")
    for name in ("max_connections", "max_prompt_chars"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if config.max_context is not None and config.max_context < 2:
        raise InputError(f"max_context must be at least 2, got {config.max_context}")
    if not 0 < config.port < 65536 and config.port != 0:
        raise InputError(f"port must be in 0..65535, got {config.port}")
    if config.max_connections is not None:
        from reference_server.connections import FD_RESERVE, open_file_limit

        needed, limit = config.max_connections + FD_RESERVE + 8, open_file_limit()
        if needed > limit:
            raise InputError(
                f"max_connections {config.max_connections} needs {needed} open files and the "
                f"limit is {limit}; lower it or raise the limit (ulimit -n)"
            )
    if config.rate_limit:
        from reference_server.rate_limit import check_storage, parse_rate_limit

        parse_rate_limit(config.rate_limit)
        check_storage(config.rate_limit_storage)


def replace(config: ServerSettings, **changes: Any) -> ServerSettings:
    """A copy with `changes` applied (validated)."""
    new = dataclasses.replace(config, **changes)
    validate(new)
    return new


# Where each limit applies when several worker processes serve: a worker owns its gate, queue
# and batch; rate-limit counters are shared only through a shared storage URI.
_PER_REQUEST = ("header_timeout_s", "body_timeout_s", "max_body_bytes", "max_prompt_chars",
                "queue_timeout_s", "request_timeout_s", "max_tokens_cap", "max_context",
                "strict")  # fmt: skip
_PER_WORKER = ("max_concurrent", "queue_size", "max_batch", "batch_wait_ms", "kv_cache_memory",
               "prefill_chunk_tokens")  # fmt: skip


@dataclass(frozen=True)
class LimitInForce:
    name: str
    value: Any
    scope: str  # "per request" | "per worker" | "shared" | "per process"
    source: str  # "flag" | "env" | "file:PATH" | "default"


def limits_in_force(config: ServerSettings) -> list[LimitInForce]:
    """The admission limits `capplan serve` reports at start, with their scope and origin."""
    from reference_server.connections import connection_budget
    from reference_server.rate_limit import shared_storage

    multi = config.server == "gunicorn" and config.workers > 1
    out: list[LimitInForce] = []

    def add(name: str, scope: str, value: Any = None) -> None:
        source = config.sources.get(name, "default")
        shown = getattr(config, name) if value is None else value
        out.append(LimitInForce(name, shown, scope, source))

    # Derived from the open-file limit unless set; each worker has its own.
    connections = connection_budget(config.max_connections)[0]
    add("max_connections", "per worker" if multi else "server", connections)

    for name in _PER_WORKER:
        scope = "server"
        if multi and name in ("max_concurrent", "queue_size"):
            total = config.workers * getattr(config, name)
            scope = f"per worker ({config.workers} workers: {total} in all)"
        elif multi:
            scope = "per worker"
        add(name, scope)
    for name in _PER_REQUEST:
        derived = name == "max_prompt_chars" and config.max_prompt_chars is None
        add(name, "per request", "auto" if derived else None)  # auto: prompts.py
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
