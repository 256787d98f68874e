"""`capplan selftest`: the load client's own ceiling against the emulated backend."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `capplan selftest` to the root app."""
    app.command("selftest")(selftest)


def selftest(
    server: str = typer.Option(
        "process",
        "--server",
        help="process: the emulated server in its own process (the client's figure); "
        "thread: in this process (a lower bound: both share one interpreter).",
    ),
    ttft_ms: float = typer.Option(20.0, "--ttft-ms", help="Emulated time to first token."),
    tpot_ms: float = typer.Option(20.0, "--tpot-ms", help="Emulated time per output token."),
    levels: str = typer.Option(
        "16,64,128,256,512", "--levels", help="Stream concurrencies to try, in order."
    ),
    duration: float = typer.Option(3.0, "--duration", help="Seconds of non-streamed requests."),
) -> None:
    """How many requests/s and concurrent streams this client generates before its timing errs."""
    from rich.console import Console

    from capplan.errors import InputError
    from capplan.loadtest.httpx.ceiling import measure_ceiling
    from capplan.render.loadtest import ceiling_table
    from capplan.units import parse_int_list

    steps = parse_int_list(levels, option="--levels")
    if server not in ("process", "thread"):
        raise InputError(f"--server must be process or thread, got '{server}'")
    with _emulated(server, ttft_ms, tpot_ms) as url:
        result = measure_ceiling(
            url, ttft_ms=ttft_ms, tpot_ms=tpot_ms, levels=steps, duration_s=duration
        )
    Console().print(ceiling_table(result, server))


def _emulated(server: str, ttft_ms: float, tpot_ms: float):  # type: ignore[no-untyped-def]
    limits = {"max_concurrent": 4096, "queue_size": 4096, "max_tokens_cap": 4096}
    if server == "thread":
        from capplan.settings import ServerSettings
        from reference_server.app import create_app
        from reference_server.emulated import EmulatedBackend, EmulatedTiming
        from reference_server.testing import serve_in_thread

        backend = EmulatedBackend(EmulatedTiming(ttft_ms=ttft_ms, tpot_ms=tpot_ms))
        config = ServerSettings(
            backend="emulated", max_concurrent=4096, queue_size=4096, max_tokens_cap=4096
        )
        return serve_in_thread(create_app(config, backend))
    import tempfile
    from pathlib import Path

    from capplan.loadtest.launch import launched_server

    args = ["--backend", "emulated", "--ttft-ms", str(ttft_ms), "--tpot-ms", str(tpot_ms)]
    for key, value in limits.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    log = Path(tempfile.gettempdir()) / "capplan-selftest-server.log"
    return launched_server(args, log_path=log)
