"""`capplan calibrate`: measure a server's step costs and write a calibration profile."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("calibrate")(calibrate)


def calibrate(
    model: str = typer.Option(
        ..., help="The model the server runs: catalog id, local model dir, or 'embedded'."
    ),
    gpu: str = typer.Option("auto", help="Catalog GPU id, 'auto' (NVML) or 'cpu'."),
    url: str | None = typer.Option(None, help="Measure this OpenAI-compatible server."),
    from_run: Path | None = typer.Option(
        None,
        "--from",
        help="Fit a finished run's records (or a calibrate run folder) instead of measuring.",
    ),
    runtime: str | None = typer.Option(
        None,
        help="The runtime the server uses: hf, vllm, or capplan (capplan serve's engine). "
        "Default: capplan when it launches capplan serve, hf with --url or --from.",
    ),
    prompt_tokens: str = typer.Option("16,256", help="Prompt lengths measured alone."),
    concurrency: str = typer.Option("1,4,8", help="Batches measured."),
    max_tokens: int = typer.Option(32, help="Output tokens per request."),
    rounds: int = typer.Option(3, help="Requests per user at each point, after one warm-up."),
    tokenizer: str | None = typer.Option(
        None, help="'embedded' or a tokenizer dir for exact prompt lengths (default: by model)."
    ),
    endpoint: str = typer.Option("completions", help="completions or chat."),
    out: Path = typer.Option(Path("calibration.json"), help="Where to write the profile."),
    run_dir: Path | None = typer.Option(
        None, help="Folder for the measuring runs (default reports/calibrate-<time>)."
    ),
) -> None:
    """Without --url or --from it launches `capplan serve` with --model (the embedded model or
    a local model directory) and measures that. Pass the profile to estimate, validate, plan,
    sweep and the emulated backend with --calibration FILE."""
    import time

    from capplan.embedded_model import ALIASES
    from capplan.errors import InputError
    from capplan.estimate.options import EstimateOptions, step_model_from_options
    from capplan.estimate.roofline import Roofline
    from capplan.planning.calibrate import (
        ladder,
        measured_points,
        profile_from_points,
        run_ladder,
    )
    from capplan.render.calibration import print_profile
    from capplan.render.console import stdout_console
    from capplan.units import parse_int_list

    if url is not None and from_run is not None:
        raise InputError("give --url (measure now) or --from (a finished run), not both")
    if rounds < 1 or max_tokens < 2:
        raise InputError("--rounds must be at least 1 and --max-tokens at least 2")
    runtime = measured_runtime(runtime, url, from_run)
    step = step_model_from_options(EstimateOptions(model=model, gpu=gpu, runtime=runtime))
    command = f"capplan calibrate --model {model} --gpu {gpu} --runtime {runtime}"
    if from_run is not None:
        from capplan.planning.calibrate import read_runs

        records = read_runs(from_run)
        command += f" --from {from_run}"
    else:
        prompts = parse_int_list(prompt_tokens, option="--prompt-tokens")
        batches = parse_int_list(concurrency, option="--concurrency")
        points = ladder(prompts, batches)
        folder = run_dir or Path("reports") / f"calibrate-{time.strftime('%Y%m%d-%H%M%S')}"
        embedded = model in ALIASES
        token_source = tokenizer or ("embedded" if embedded else None)
        with _server(url, model, max(batches), folder) as base_url:

            def run_point(point: Any, where: Path) -> list[Any]:
                return _run_point(
                    point, where, base_url, max_tokens, rounds, token_source, endpoint
                )

            records = run_ladder(points, run_point, folder)
        command += f" --url {url}" if url else " (launched capplan serve)"
    roof: Roofline = step.roofline
    profile = profile_from_points(
        measured_points(records),
        roof,
        runtime=runtime,
        gpu=step.gpu.id,
        model=step.spec.id,
        layers=step.spec.layers,
        default_floor_ms=step.costs.floor_ms_per_layer * step.spec.layers,
        default_host_ms=step.costs.host_ms_per_sequence,
        source=command,
    )
    from capplan.estimate.calibration import write_profile

    written = write_profile(profile, out)
    print_profile(profile, written, stdout_console())


def measured_runtime(runtime: str | None, url: str | None, from_run: Path | None) -> str:
    """--runtime, else the one calibrate measures: capplan serve's engine when it launches it,
    hf (the common server) behind --url or --from."""
    if runtime:
        return runtime
    return "hf" if url is not None or from_run is not None else "capplan"


@contextlib.contextmanager
def _server(url: str | None, model: str, max_concurrency: int, folder: Path) -> Iterator[str]:
    """The server to measure: --url, or one `capplan serve` launched for the whole ladder."""
    if url is not None:
        yield url
        return
    from capplan.embedded_model import ALIASES
    from capplan.errors import InputError
    from capplan.loadtest.launch import launched_server

    if model not in ALIASES and not Path(model).is_dir():
        raise InputError(
            f"--model {model} is no local model: give --url of a server running it, or a model "
            "directory or 'embedded' to launch capplan serve"
        )
    launch = ["--max-concurrent", str(max_concurrency), "--queue-size", str(max_concurrency)]
    launch += ["--max-batch", str(max_concurrency), "--max-tokens-cap", "4096"]
    if Path(model).is_dir():
        launch = ["--model", str(model), *launch]
    with launched_server(launch, log_path=folder / "server.log") as base_url:
        yield base_url


def _run_point(
    point: Any,
    where: Path,
    url: str,
    max_tokens: int,
    rounds: int,
    tokenizer: str | None,
    endpoint: str,
) -> list[Any]:
    from capplan.loadtest.httpx.run import run_load
    from capplan.loadtest.run import load_scenario

    overrides: dict[str, Any] = {
        "url": url,
        "name": f"calibrate-{point.label}",
        "concurrency": point.concurrency,
        "requests": point.concurrency * (rounds + 1),
        # Each user's first request pays one-off costs (connections, kernels' first launch).
        "warmup": "1r",
        "prompt_tokens": point.prompt_tokens,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "tokenizer": tokenizer,
        "endpoint": endpoint,
    }
    return run_load(load_scenario(None, overrides), out_dir=where, reports=False).records
