"""`capplan loadtest [SCENARIO]`: run a workload against an OpenAI-compatible endpoint.

Every scenario key has a flag of the same name (`prompt_tokens` -> `--prompt-tokens`).
`--launch` starts the reference server for the run; options after `--` go to it:
`capplan loadtest ci-smoke --launch -- --backend emulated --ttft-ms 20`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

_HELP_DIST = (
    "A token count (128) or a distribution: uniform:64:256, normal:512:64, lognormal:200:0.6"
)


def register(app: typer.Typer) -> None:
    """Add `capplan loadtest` to the root app."""
    app.command(
        "loadtest",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(loadtest)


def loadtest(
    ctx: typer.Context,
    scenario: str | None = typer.Argument(
        None, help="Scenario name (scenarios/NAME.toml) or a .toml path; flags alone also work."
    ),
    url: str | None = typer.Option(
        None, "--url", help="Target base URL, e.g. http://127.0.0.1:8000"
    ),
    launch: bool = typer.Option(
        False, "--launch", help="Start the reference server for the run (options after --)."
    ),
    endpoint: str | None = typer.Option(None, "--endpoint", help="completions or chat."),
    model_name: str | None = typer.Option(
        None, "--model-name", help="The request's model (default: first of /v1/models)."
    ),
    stream: bool | None = typer.Option(None, "--stream/--no-stream"),
    include_usage: bool | None = typer.Option(
        None, "--include-usage/--no-include-usage", help="Ask for the usage chunk when streaming."
    ),
    ignore_eos: bool | None = typer.Option(
        None, "--ignore-eos/--no-ignore-eos", help="vLLM/TGI: run every answer to max_tokens."
    ),
    temperature: float | None = typer.Option(None, "--temperature"),
    prompt_tokens: str | None = typer.Option(None, "--prompt-tokens", help=_HELP_DIST),
    max_tokens: str | None = typer.Option(None, "--max-tokens", help=_HELP_DIST),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help='JSONL: {"prompt": ...} or {"messages": [...]} per line.'
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="'embedded' or a local tokenizer directory (exact prompt lengths).",
    ),
    concurrency: str | None = typer.Option(
        None, "--concurrency", "-c", help="Closed loop; a comma list runs a ladder: 1,4,16."
    ),
    rate: str | None = typer.Option(
        None, "--rate", "-r", help="Open loop requests/s; a comma list runs a ladder."
    ),
    arrival: str | None = typer.Option(None, "--arrival", help="constant, poisson or gamma."),
    burstiness: float | None = typer.Option(
        None, "--burstiness", help="Gamma shape: 1 = Poisson, < 1 burstier."
    ),
    ramp: str | None = typer.Option(None, "--ramp", help="Open-loop rate ramp START:END req/s."),
    requests: int | None = typer.Option(None, "--requests", "-n", help="Requests per step."),
    duration: str | None = typer.Option(None, "--duration", "-d", help="Per step: 60s, 2m."),
    warmup: str | None = typer.Option(
        None,
        "--warmup",
        help="Trimmed from each step: 5s, or 1r (each user's first request: a ladder's default).",
    ),
    min_requests: int | None = typer.Option(
        None,
        "--min-requests",
        help="A step goes on until this many requests started after its warmup completed "
        "(default: its concurrency; open loop 1; 0: never extend).",
    ),
    stagger: str | None = typer.Option(
        None, "--stagger", help="Closed loop: spread the workers' first requests over this: 2s."
    ),
    backoff: bool | None = typer.Option(
        None,
        "--backoff/--no-backoff",
        help="Closed loop: after a 429/503 wait its Retry-After or 0.5-8 s and resend, as the "
        "OpenAI clients do (default); --no-backoff resends at once.",
    ),
    max_retries: int | None = typer.Option(
        None, "--max-retries", help="Closed loop: resends of one refused request (default 2)."
    ),
    honor_retry_after: bool | None = typer.Option(
        None, "--honor-retry-after/--no-honor-retry-after", hidden=True
    ),  # the flag before --backoff
    timeout: str | None = typer.Option(None, "--timeout", help="Per request: 120s."),
    slo_ttft_ms: float | None = typer.Option(None, "--slo-ttft-ms"),
    slo_tpot_ms: float | None = typer.Option(None, "--slo-tpot-ms"),
    slo_e2e_ms: float | None = typer.Option(None, "--slo-e2e-ms"),
    seed: int | None = typer.Option(None, "--seed"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CAPPLAN_API_KEY"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default reports/ID)."),
    threshold: list[str] = typer.Option(
        [], "--threshold", help="Pass/fail, repeatable: 'p95(ttft)<500', 'error_rate<1%'."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Live progress line."),
    reports: bool = typer.Option(
        True,
        "--reports/--no-reports",
        help="Build report.md/html at the end (else: capplan report).",
    ),
    engine: str = typer.Option("httpx", "--engine", help="httpx (default) or locust."),
    locust_workers: int = typer.Option(0, "--locust-workers", help="Local Locust workers."),
    locust_remote_workers: int = typer.Option(
        0, "--locust-remote-workers", help="Locust workers expected from other machines."
    ),
    locust_master_bind: str | None = typer.Option(None, "--locust-master-bind"),
    locust_master_port: int | None = typer.Option(None, "--locust-master-port"),
    locust_ui: bool = typer.Option(False, "--locust-ui", help="Locust's web UI on 127.0.0.1."),
) -> None:
    """Measure TTFT, TPOT, ITL, E2E, tokens/s and errors under load; write records and reports.

    Exit 0: ran and every threshold held; 1: a threshold failed; 2: usage; 3: the target failed
    (unreachable, no request succeeded, or the run stopped early on it); 130: interrupted."""
    from rich.console import Console

    from capplan.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TARGET, InputError
    from capplan.loadtest.run import load_scenario
    from capplan.loadtest.summary_model import RunSummary
    from capplan.loadtest.verdict import target_failure
    from capplan.render.console import stdout_console
    from capplan.render.loadtest import LiveProgress, print_result

    server_args = list(ctx.args)
    if scenario is not None and scenario.startswith("-"):
        # `capplan loadtest --launch -- --backend emulated`: no scenario, so click gave the
        # first server option the SCENARIO slot.
        server_args.insert(0, scenario)
        scenario = None
    if server_args and not launch:
        raise InputError(f"unexpected arguments {server_args}; server options need --launch --")
    overrides = {
        "url": url,
        "launch": server_args if launch and server_args else None,
        "endpoint": endpoint,
        "model_name": model_name,
        "stream": stream,
        "include_usage": include_usage,
        "ignore_eos": ignore_eos,
        "temperature": temperature,
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "prompt_file": str(prompt_file) if prompt_file else None,
        "tokenizer": tokenizer,
        "concurrency": concurrency,
        "rate": rate,
        "arrival": arrival,
        "burstiness": burstiness,
        "ramp": ramp,
        "requests": requests,
        "duration": duration,
        "warmup": warmup,
        "min_requests": min_requests,
        "stagger": stagger,
        "backoff": backoff if backoff is not None else honor_retry_after,
        "max_retries": max_retries,
        "timeout": timeout,
        "slo": {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms, "e2e_ms": slo_e2e_ms},
        "seed": seed,
        "api_key": api_key,
    }
    if launch and not server_args:
        overrides["launch"] = _scenario_launch(scenario)
    config = load_scenario(scenario, overrides)
    evaluate = _threshold_evaluator(threshold)
    console = Console(stderr=True)
    run = _runner(engine, locust_workers, locust_remote_workers, locust_master_bind,
                  locust_master_port, locust_ui)  # fmt: skip
    if progress and console.is_terminal:
        with LiveProgress(console) as live:
            result = run(config, out_dir=out, progress=live, reports=reports)
    else:
        result = run(config, out_dir=out, reports=reports)
    summary = RunSummary.from_dict(result.summary)
    results = evaluate(summary) if evaluate else []
    print_result(stdout_console(), summary, result.out_dir, result.reports, result.report_error,
                 results)  # fmt: skip
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    failure = target_failure(summary, result.records)
    if failure is not None:
        typer.echo(f"error: the target failed: {failure}", err=True)
        raise typer.Exit(EXIT_TARGET)
    if any(not r.passed for r in results):
        raise typer.Exit(EXIT_FAILED)


def _scenario_launch(scenario: str | None) -> list[str]:
    """`--launch` alone: the scenario's own server options, else an empty list (defaults)."""
    from capplan.loadtest.scenario import read_scenario

    if scenario:
        launch = read_scenario(scenario).get("launch")
        if isinstance(launch, list):
            return [str(a) for a in launch]
        if isinstance(launch, str):
            return launch.split()
    return []


def _threshold_evaluator(expressions: list[str]):  # type: ignore[no-untyped-def]
    """Validates expressions before the run (a typo fails in a second, not after an hour)."""
    if not expressions:
        return None
    from capplan.regression.thresholds import evaluate, parse_thresholds

    parse_thresholds(expressions)
    return lambda summary: evaluate(summary, expressions)


def _runner(
    engine: str,
    workers: int,
    remote_workers: int,
    master_bind: str | None,
    master_port: int | None,
    ui: bool,
) -> Callable[..., Any]:
    from capplan.errors import InputError

    if engine == "httpx":
        from capplan.loadtest.httpx.run import run_load

        return run_load
    if engine == "locust":
        from capplan.loadtest.locust.engine import LocustOptions, run_locust

        options = LocustOptions(
            workers=workers,
            remote_workers=remote_workers,
            master_bind=master_bind,
            master_port=master_port,
            ui=ui,
        )
        return functools.partial(run_locust, options=options)
    raise InputError(f"engine '{engine}' is not one of: httpx, locust")
