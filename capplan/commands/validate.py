"""`capplan validate`: the estimate and a measurement of the same deployment, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("validate")(validate)


def validate(
    gpu: str = typer.Option(..., help="Catalog GPU id, e.g. rtx3080."),
    model: str = typer.Option(..., help="Catalog model id, e.g. qwen3-8b-int8."),
    prompt_tokens: int = typer.Option(256, help="Prompt tokens per request."),
    max_tokens: int = typer.Option(64, help="Output tokens per request."),
    concurrency: int = typer.Option(4, help="Concurrent requests (closed loop)."),
    requests: int = typer.Option(24, help="Requests to measure."),
    url: str | None = typer.Option(
        None, help="Measure this server (a real GPU) instead of the emulated backend."
    ),
    run: Path | None = typer.Option(None, help="Use this finished run instead of measuring."),
    sweep: Path | None = typer.Option(
        None, help="A sweep directory of the same workload: its safe concurrency is measured."
    ),
    tolerance: float = typer.Option(10.0, help="Error (%) within which a figure agrees."),
    calibration: str | None = typer.Option(
        None, help="A `capplan calibrate` profile: the estimate's timing from this host."
    ),
    runtime: str = typer.Option(
        "hf",
        help="The runtime the server uses: hf, vllm or capplan (capplan serve's engine); "
        "other than hf needs --url or --run (the emulated backend runs hf's).",
    ),
    tokenizer: str | None = typer.Option(
        None, help="'embedded' or a tokenizer dir for exact prompt lengths (default: by model)."
    ),
    out: Path | None = typer.Option(None, help="Run directory (default reports/validate-<time>)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the table as JSON."),
) -> None:
    """Without --url or --run it launches the emulated backend with this GPU and model's timing,
    which must agree with the estimate; against a real server the error column is the
    estimator's error. Exit 1 when a figure is off by more than --tolerance."""
    import time

    from capplan.errors import EXIT_FAILED, InputError
    from capplan.planning.validate import (
        WorkloadShape,
        check_same_workload,
        check_target_answered,
        estimated_figures,
        measured_figures,
        served_prompt_tokens,
        sweep_safe,
    )
    from capplan.planning.validate import (
        validate as side_by_side,
    )
    from capplan.regression.runs import load_run
    from capplan.render.console import stdout_console
    from capplan.render.regression import validation_table

    if url is not None and run is not None:
        raise InputError("give --url (measure now) or --run (a finished run), not both")
    emulated = url is None and run is None
    if emulated and runtime != "hf":
        # The emulated backend schedules the hf step model whatever --runtime says.
        raise InputError(
            f"--runtime {runtime} cannot be emulated (the emulated backend runs hf's step "
            f"model): give --url of a server running {runtime}, or --run of its finished run"
        )
    shape = WorkloadShape(prompt_tokens, max_tokens, concurrency)
    timing, estimated = _estimate(gpu, model, shape, runtime, calibration)
    if run is None:
        run = out or Path("reports") / f"validate-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        _measure(run, gpu, model, shape, requests, url, calibration, tokenizer)
    summary = load_run(run, with_records=False).summary
    check_same_workload(summary.config, shape, run)
    check_target_answered(summary, run)
    # The server's own prompt count: a chat template lengthens every prompt, and the estimate
    # must price what the model really prefilled.
    served = served_prompt_tokens(summary)
    if served is not None and served != shape.prompt_tokens:
        shape = WorkloadShape(served, shape.output_tokens, shape.concurrency)
        timing, estimated = _estimate(gpu, model, shape, runtime, calibration)
    estimate = estimated_figures(
        timing,
        shape,
        memory=estimated.memory,
        kv_ceiling=estimated.zero_margin_concurrency,
    )
    measured = measured_figures(
        summary,
        safe_concurrency=sweep_safe(sweep) if sweep is not None else None,
        telemetry_csv=run / "telemetry.csv",
    )
    mode = "emulated backend" if emulated else "measured server"
    served_note = (
        f" ({shape.prompt_tokens} as served)" if shape.prompt_tokens != prompt_tokens else ""
    )
    subject = (
        f"{model} on {gpu}, {prompt_tokens}{served_note}+{max_tokens} tokens x {concurrency} "
        f"({mode})"
    )
    notes = {"safe_concurrency": f"recommended: {estimated.concurrency}"}
    basis = "calibrated" if timing.calibrated else "uncalibrated (capplan calibrate measures it)"
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        notes[key] = f"estimate {basis}"
    if sweep is None:
        notes["safe_concurrency"] += "; --sweep DIR measures it"
    result = side_by_side(estimate, measured, subject=subject, tolerance_pct=tolerance, notes=notes)
    stdout_console().print(validation_table(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    if not result.agrees:
        raise typer.Exit(EXIT_FAILED)


def _estimate(
    gpu: str, model: str, shape: Any, runtime: str, calibration: str | None
) -> tuple[Any, Any]:
    """Service timing, and the estimator's result at this workload and concurrency."""
    from capplan.estimate.calibration import read_profile
    from capplan.estimate.options import EstimateOptions, estimate_from_options
    from capplan.estimate.service_timing import service_timing

    profile = read_profile(calibration) if calibration else None
    timing = service_timing(gpu, model, runtime=runtime, calibration=profile)
    result = estimate_from_options(
        EstimateOptions(
            model=model,
            gpu=gpu,
            runtime=runtime,
            prompt_tokens=shape.prompt_tokens,
            max_tokens=shape.output_tokens,
            concurrency=shape.concurrency,
            calibration=calibration,
        )
    )
    return timing, result


def _measure(
    run_dir: Path,
    gpu: str,
    model: str,
    shape: Any,
    requests: int,
    url: str | None,
    calibration: str | None,
    tokenizer: str | None,
) -> None:
    from capplan.embedded_model import ALIASES
    from capplan.loadtest.httpx.run import run_load
    from capplan.loadtest.run import load_scenario

    overrides: dict[str, Any] = {
        "requests": requests,
        "concurrency": shape.concurrency,
        "prompt_tokens": shape.prompt_tokens,
        "max_tokens": shape.output_tokens,
        "ignore_eos": True,
        "name": "validate",
        "tokenizer": tokenizer or ("embedded" if model in ALIASES else None),
    }
    if url is not None:
        overrides["url"] = url
    else:
        overrides["launch"] = [
            "--backend", "emulated", "--gpu", gpu, "--emulated-model", model,
            "--max-concurrent", str(shape.concurrency), "--queue-size", str(shape.concurrency),
            "--max-tokens-cap", str(max(shape.output_tokens, 1024)),
        ]  # fmt: skip
        if calibration:
            overrides["launch"] += ["--calibration", str(calibration)]
    run_load(load_scenario(None, overrides), out_dir=run_dir, reports=False)
