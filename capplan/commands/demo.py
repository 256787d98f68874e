"""`capplan demo`: estimate -> serve the embedded model -> load test -> sweep -> plan -> report.

Every step is the real command, run as a subprocess and printed first, so the demo doubles as a
tour of the CLI. Sized for 2 CPU cores and a few minutes; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer

# The embedded tiny model on CPU: short prompts and answers keep each request well under a second.
LOAD_SHAPE = ("--prompt-tokens", "64", "--max-tokens", "24", "--tokenizer", "embedded")
SERVER_OPTIONS = ("--backend", "transformers", "--max-concurrent", "4", "--queue-size", "32")


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("demo")(demo)


def demo(
    out: Path = typer.Option(Path("reports/demo"), help="Where every step writes its output."),
    gpu: str = typer.Option("rtx3080", help="GPU for the estimate step."),
    model: str = typer.Option("qwen3-8b-int8", help="Model for the estimate step."),
    requests: int = typer.Option(30, help="Requests per load step and per sweep point."),
) -> None:
    """The whole loop on this machine, printing the path of the HTML report at the end."""
    from capplan.loadtest.launch import launched_server

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    _step(1, "estimate the deployment", "estimate", "--gpu", gpu, "--model", model,
          "--prompt-tokens", "512", "--max-tokens", "512")  # fmt: skip
    _say(2, "serve the embedded model", f"python -m reference_server {' '.join(SERVER_OPTIONS)}")
    with launched_server(SERVER_OPTIONS, log_path=out / "server.log") as url:
        typer.echo(f"   serving at {url} (log: {out / 'server.log'})")
        _step(3, "load test a concurrency ladder", "loadtest", "--url", url,
              "--concurrency", "1,2,4", "--requests", str(requests), *LOAD_SHAPE,
              "--no-reports", "--out", str(out / "loadtest"))  # fmt: skip
        # On a badly overloaded machine the sweep may find no safe point (exit 1); the demo
        # still has its report to show, and the plan says what it lacks.
        _step(4, "sweep for the highest concurrency meeting the SLOs", "sweep", "--url", url,
              "--points", "1,2,4,8", "--slo", "p95(ttft)<500ms", "--slo", "error_rate<1%",
              "--requests", str(requests), *LOAD_SHAPE, "--out", str(out / "sweep"),
              "--no-resume", allowed=(1,))  # fmt: skip
    _step(5, "replicas for 20 requests/s from the sweep", "plan", "--sweep", str(out / "sweep"),
          "--rate", "20", "--slo", "p95(ttft)<500ms", fatal=False)  # fmt: skip
    _step(6, "build the reports from the records", "report", str(out / "loadtest"))
    html = (out / "loadtest" / "report.html").resolve()
    typer.echo(f"\ndemo finished in {time.monotonic() - started:.0f} s")
    typer.echo(f"sweep plot:  {(out / 'sweep' / 'sweep.png').resolve()}")
    typer.echo(f"HTML report: {html}")


STEPS = 6


def _say(number: int, title: str, command: str) -> None:
    typer.secho(f"\n[{number}/{STEPS}] {title}", bold=True)
    typer.echo(f"$ {command}")


def _step(
    number: int, title: str, *args: str, fatal: bool = True, allowed: tuple[int, ...] = ()
) -> None:
    """Runs `capplan ARGS`; an exit code other than 0 and `allowed` ends the demo if `fatal`."""
    _say(number, title, "capplan " + " ".join(shlex.quote(a) for a in args))
    result = subprocess.run([sys.executable, "-m", "capplan.cli", *args], check=False)
    if result.returncode not in (0, *allowed):
        typer.secho(f"step {number} failed (exit {result.returncode})", fg="red", err=True)
        if fatal:
            raise typer.Exit(result.returncode)
