"""`capplan serve`: run the reference inference server (reference_server/)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

_HELP = """Run the OpenAI-compatible reference server with admission control.

Settings: flag > environment CAPPLAN_* > --config FILE (from `capplan estimate --emit
json|env|gunicorn`) > default. Binds 127.0.0.1 unless --host says otherwise."""


def serve(
    backend: str | None = typer.Option(None, help="transformers (default) or emulated."),
    model: str | None = typer.Option(None, help="Local model dir; default: embedded tiny model."),
    device: str | None = typer.Option(None, help="cuda, cuda:N or cpu; default: cuda if any."),
    server: str | None = typer.Option(None, help="uvicorn (default) or gunicorn."),
    workers: int | None = typer.Option(None, help="gunicorn worker processes."),
    threads: int | None = typer.Option(None, help="gunicorn threads per worker."),
    host: str | None = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8000; 0 picks a free one)."),
    config: Path | None = typer.Option(
        None, "--config", help="Settings file from `capplan estimate --emit json|env|gunicorn`."
    ),
    api_key: str | None = typer.Option(None, help="Require Authorization: Bearer <key>."),
    max_concurrent: int | None = typer.Option(None, help="Requests generating at once."),
    queue_size: int | None = typer.Option(None, help="Requests waiting for a slot."),
    queue_timeout: float | None = typer.Option(None, help="Seconds a request may wait queued."),
    request_timeout: float | None = typer.Option(None, help="Seconds of generation before 504."),
    max_tokens_cap: int | None = typer.Option(None, help="Largest max_tokens served."),
    max_context: int | None = typer.Option(None, help="Prompt + max_tokens limit (tokens)."),
    strict: bool | None = typer.Option(None, "--strict/--no-strict", help="422 over the cap."),
    max_body_bytes: int | None = typer.Option(None, help="Largest request body (413 beyond)."),
    rate_limit: str | None = typer.Option(None, help="Per client, e.g. '10/minute;100/hour'."),
    rate_limit_storage: str | None = typer.Option(
        None, help="limits storage URI: memory:// (per worker) or redis://host:port (shared)."
    ),
    vram_guard: float | None = typer.Option(None, help="Refuse above this fraction of VRAM."),
    drain_timeout: float | None = typer.Option(None, help="Seconds to finish work on SIGTERM."),
    max_batch: int | None = typer.Option(None, help="Requests decoded in one batch."),
    batch_wait_ms: float | None = typer.Option(None, help="Wait to fill a batch (ms)."),
    gpu: str | None = typer.Option(None, help="Emulated: catalog GPU id for roofline timing."),
    emulated_model: str | None = typer.Option(None, help="Emulated: catalog model id."),
    ttft_ms: float | None = typer.Option(None, help="Emulated: exact time to first token."),
    tpot_ms: float | None = typer.Option(None, help="Emulated: exact time per output token."),
    tokens_per_chunk: int | None = typer.Option(None, help="Emulated: tokens per SSE chunk."),
) -> None:
    from reference_server.config import limits_in_force, resolve_config

    flags = {
        "backend": backend, "model": model, "device": device, "server": server,
        "workers": workers, "threads": threads, "host": host, "port": port, "api_key": api_key,
        "max_concurrent": max_concurrent, "queue_size": queue_size,
        "queue_timeout_s": queue_timeout, "request_timeout_s": request_timeout,
        "max_tokens_cap": max_tokens_cap, "max_context": max_context, "strict": strict,
        "max_body_bytes": max_body_bytes, "rate_limit": rate_limit,
        "rate_limit_storage": rate_limit_storage, "vram_guard": vram_guard,
        "drain_timeout_s": drain_timeout, "max_batch": max_batch, "batch_wait_ms": batch_wait_ms,
        "gpu": gpu, "emulated_model": emulated_model, "ttft_ms": ttft_ms, "tpot_ms": tpot_ms,
        "tokens_per_chunk": tokens_per_chunk,
    }  # fmt: skip
    settings = resolve_config(flags, os.environ, config)

    def on_listening(url: str) -> None:
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
        typer.echo("\n".join(lines))
        sys.stdout.flush()

    from reference_server import launch

    if settings.server == "gunicorn":
        launch.run_gunicorn(settings, on_listening)
    else:
        launch.run_uvicorn(settings, on_listening)


def register(app: typer.Typer) -> None:
    """Add `capplan serve` to the root app."""
    app.command("serve", help=_HELP)(serve)


def main() -> None:
    """Entry point of `python -m reference_server`."""
    from capplan.errors import InputError

    standalone = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    standalone.command(help=_HELP)(serve)
    try:
        standalone()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
