"""Build the backend and the app from a ServerSettings, and run them under uvicorn or gunicorn.

SIGTERM: uvicorn stops accepting connections at once, /ready turns 503, in-flight requests
(queued ones included) finish within `drain_timeout_s`; what is left then is cut with an error
(reference_server/serving.py) and the process exits with status 75 instead of 0. Under gunicorn
the master forwards SIGTERM to each worker, each drains alike, gunicorn kills any left after
`graceful_timeout` (the drain plus a grace), and the master exits 75 if any worker cut requests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from capplan.settings import ServerSettings

CONFIG_ENV = "CAPPLAN_SERVER_CONFIG_JSON"  # the resolved config, handed to gunicorn workers
ALLOC_CONF_ENV = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE_SEGMENTS = "expandable_segments:True"
DEFAULT_EMULATED_TTFT_MS = 50.0
DEFAULT_EMULATED_TPOT_MS = 10.0


def build_backend(config: ServerSettings) -> Any:
    """The backend `config` names. Heavy imports happen only for the one chosen."""
    if config.backend == "emulated":
        from reference_server.emulated import EmulatedBackend, EmulatedTiming, timing_from_catalog

        if config.gpu and config.emulated_model:
            timing = timing_from_catalog(
                config.gpu,
                config.emulated_model,
                ttft_ms=config.ttft_ms,
                tpot_ms=config.tpot_ms,
                calibration=config.calibration,
            )
            model_id = config.emulated_model
        else:
            if config.gpu or config.emulated_model:
                from capplan.errors import InputError

                raise InputError("emulated roofline timing needs both --gpu and --emulated-model")
            timing = EmulatedTiming(
                ttft_ms=DEFAULT_EMULATED_TTFT_MS if config.ttft_ms is None else config.ttft_ms,
                tpot_ms=DEFAULT_EMULATED_TPOT_MS if config.tpot_ms is None else config.tpot_ms,
                max_context=config.max_context or 32_768,
            )
            model_id = "emulated"
        return EmulatedBackend(
            timing, model_id=model_id, gpu=config.gpu or "none",
            tokens_per_chunk=config.tokens_per_chunk,
        )  # fmt: skip
    from reference_server.transformers_backend import TransformersBackend

    return TransformersBackend(
        config.model,
        device=config.device,
        max_batch=config.max_batch,
        batch_wait_ms=config.batch_wait_ms,
        engine=config.engine,
        kv_cache_memory=config.kv_cache_memory,
        gpu_memory_utilization=config.gpu_memory_utilization,
        prefill_chunk_tokens=config.prefill_chunk_tokens,
    )


def use_expandable_segments(environ: dict[str, str] | None = None) -> None:
    """`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` unless the user set the variable.

    The engine's transient tensors change shape every step; with expandable segments the
    caching allocator maps and unmaps pages of one segment instead of caching fixed-size blocks
    it cannot reuse, so what the GPU shows stays near what is allocated (the estimate). CUDA
    reads the variable when it first allocates: this runs before the backend is built.
    """
    env = os.environ if environ is None else environ
    env.setdefault(ALLOC_CONF_ENV, EXPANDABLE_SEGMENTS)


def build_app(config: ServerSettings) -> Any:
    """The app of a server process (uvicorn or a gunicorn worker)."""
    from prometheus_client import disable_created_metrics

    from reference_server.app import create_app

    # Process-wide, so only here and never in create_app (tests build many apps in one process):
    # the `_created` series double /metrics and no dashboard reads them.
    disable_created_metrics()

    return create_app(config, build_backend(config))


def app_from_environment() -> Any:
    """App factory for gunicorn workers (and `uvicorn --factory`): config from CONFIG_ENV."""
    from reference_server.config import resolve_config

    use_expandable_segments()
    raw = os.environ.get(CONFIG_ENV)
    if raw:
        return build_app(ServerSettings(**json.loads(raw)))
    return build_app(resolve_config(environ=os.environ))


def serve(settings: ServerSettings, say: Callable[[str], None]) -> None:
    """Run the server `settings` describe; `say` prints the start banner once it listens."""
    use_expandable_segments()  # before anything touches CUDA; gunicorn workers inherit it

    def on_listening(url: str) -> None:
        say("\n".join(start_banner(settings, url)))

    if settings.server == "gunicorn":
        run_gunicorn(settings, on_listening)
    else:
        run_uvicorn(settings, on_listening)


def start_banner(settings: ServerSettings, url: str) -> list[str]:
    """What the server says once it listens: where, how, and every limit in force."""
    from reference_server.config import limits_in_force

    procs = f"{settings.workers} workers" if settings.server == "gunicorn" else "1 process"
    lines = [
        f"capplan serve: {url}  (backend {settings.backend}, {settings.server}, {procs})",
        f"  OpenAI API: {url}/v1   docs: {url}/docs   metrics: {url}/metrics",
    ]
    if settings.server == "gunicorn" and settings.workers > 1:
        lines.append(
            "  /metrics sums every worker; /stats and /ready describe only the worker that "
            "answers (its pid is in /stats)"
        )
    lines.append("  limits in force:")
    limits = limits_in_force(settings)
    shown = [str("none" if limit.value is None else limit.value) for limit in limits]
    width = max(12, *(len(value) for value in shown))
    scope_width = max(len(limit.scope) for limit in limits)
    for limit, value in zip(limits, shown, strict=True):
        scope = f"{limit.scope:<{scope_width}}"
        lines.append(f"    {limit.name:<18} {value:<{width}} {scope} [{limit.source}]")
    if settings.api_key:
        lines.append("  API key required (Authorization: Bearer ...)")
    if settings.forwarded_allow_ips:
        lines.append(f"  X-Forwarded-For trusted from: {settings.forwarded_allow_ips}")
    return lines


def run_uvicorn(config: ServerSettings, on_listening: Callable[[str], None]) -> None:
    from reference_server.serving import (
        DRAIN_INCOMPLETE_EXIT,
        DrainingServer,
        shutdown_timeout_s,
        uvicorn_config,
    )
    from reference_server.testing import bind_socket

    app = build_app(config)
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    server = DrainingServer(
        uvicorn_config(
            app,
            lifespan="on",
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=shutdown_timeout_s(config),
        )
    )
    on_listening(_url(host, port))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.drain_incomplete():
        raise SystemExit(DRAIN_INCOMPLETE_EXIT)


def run_gunicorn(config: ServerSettings, on_listening: Callable[[str], None]) -> None:
    # Before anything imports prometheus_client: workers then write metrics to shared files
    # and /metrics sums every worker.
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="capplan-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    os.environ[CONFIG_ENV] = config.to_json()

    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in gunicorn_settings(config).items():
                self.cfg.set(key, value)
            self.cfg.set("when_ready", lambda arbiter: on_listening(_listener_url(arbiter)))
            self.cfg.set("child_exit", _mark_worker_dead)

        def load(self) -> Any:
            return app_from_environment()

    from reference_server import serving

    serving.share_drain_flag()
    try:
        Application().run()
    except SystemExit as exit_:
        # gunicorn's master exits 0 however its workers' drains went; say so when one cut.
        if exit_.code in (0, None) and serving.drain_was_cut():
            raise SystemExit(serving.DRAIN_INCOMPLETE_EXIT) from None
        raise
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def gunicorn_settings(config: ServerSettings) -> dict[str, Any]:
    from reference_server.serving import shutdown_timeout_s

    return {
        "bind": [f"{config.host}:{config.port}"],
        "workers": config.workers,
        "threads": config.threads,
        "worker_class": "reference_server.gunicorn_worker.Worker",
        # The worker cuts what is left at drain_timeout_s, then needs a moment to write the
        # errors; gunicorn kills it after graceful_timeout.
        "graceful_timeout": shutdown_timeout_s(config),
        # A worker silent for this long is killed; generation runs off the event loop, so the
        # loop keeps notifying even during long requests.
        "timeout": max(60, round(config.queue_timeout_s + config.request_timeout_s) + 30),
        "keepalive": 5,
        "loglevel": "info",
    }


def _listener_url(arbiter: Any) -> str:
    listener = arbiter.LISTENERS[0]
    host, port = listener.sock.getsockname()[:2]
    return _url(host, port)


def _mark_worker_dead(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
