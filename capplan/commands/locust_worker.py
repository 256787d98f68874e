"""`capplan locust-worker`: lend this machine's CPU to a `capplan loadtest --engine locust` run.

The worker is a child process (Locust monkey-patches whatever imports it). The master of a
capplan run lives for one load step, so by default the worker reconnects after each step and
serves run after run until Ctrl-C.
"""

from __future__ import annotations

import subprocess
import time

import typer

RECONNECT_PAUSE_S = 1.0


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""

    @app.command("locust-worker")
    def locust_worker(
        master: str = typer.Option(
            ..., "--master", help="Host of the machine running capplan loadtest (the master)."
        ),
        master_port: int = typer.Option(5557, "--master-port", help="The master's Locust port."),
        once: bool = typer.Option(False, "--once", help="Serve one load step, then exit."),
    ) -> None:
        """Run a Locust worker for `capplan loadtest --engine locust --locust-remote-workers N`."""
        from capplan.loadtest.locust.engine import worker_command

        command = worker_command(master, master_port)
        typer.echo(f"locust worker: serving {master}:{master_port} (Ctrl-C to stop)", err=True)
        while True:
            process = subprocess.Popen(command)
            try:
                code = process.wait()
            except KeyboardInterrupt:
                process.terminate()
                process.wait()
                raise typer.Exit(130) from None
            if once:
                raise typer.Exit(code)
            if code != 0:
                typer.echo(f"locust worker exited with code {code}; reconnecting", err=True)
            time.sleep(RECONNECT_PAUSE_S)
