"""`capplan plan --rate R --slo ...`: replicas and GPUs for a target arrival rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from capplan.loadtest.summary_model import RunSummary


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("plan")(plan)


def plan(
    rate: float = typer.Option(..., "--rate", help="Target arrival rate, requests/s."),
    slo: list[str] = typer.Option(
        [], "--slo", help="SLO, e.g. 'p95(ttft)<2s', 'p95(e2e)<10s'. Repeatable."
    ),
    headroom: float = typer.Option(
        0.2, help="Extra capacity: 0.2 sizes for 20% above --rate (bursts, a replica down)."
    ),
    gpus_per_replica: int = typer.Option(1, help="GPUs one replica uses (tensor parallel)."),
    run: Path | None = typer.Option(
        None, "--run", help="Measured run directory (closed loop at one concurrency)."
    ),
    sweep: Path | None = typer.Option(
        None, "--sweep", help="Sweep directory: plan from its highest safe concurrency."
    ),
    gpu: str | None = typer.Option(None, help="Estimate mode: catalog GPU id."),
    model: str | None = typer.Option(None, help="Estimate mode: catalog model id."),
    quant: str | None = typer.Option(None, help="Estimate mode: quantization."),
    prompt_tokens: int = typer.Option(512, help="Estimate mode: prompt tokens per request."),
    max_tokens: int = typer.Option(256, help="Estimate mode: output tokens per request."),
    concurrency: int | None = typer.Option(
        None, help="Concurrent requests per replica (default: the run's, or the KV limit)."
    ),
    calibration: str | None = typer.Option(
        None, help="Estimate mode: a `capplan calibrate` profile for the timing."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the plan as JSON."),
) -> None:
    """Replicas (and GPUs) for --rate, from a measured run, a sweep, or an estimate."""
    from capplan.errors import InputError
    from capplan.planning.plan import plan_replicas
    from capplan.regression.thresholds import parse_thresholds
    from capplan.render.console import stdout_console
    from capplan.render.regression import plan_table

    sources = sum(x is not None for x in (run, sweep, gpu))
    if sources != 1:
        raise InputError("give exactly one of --run DIR, --sweep DIR, or --gpu with --model")
    if not slo:
        raise InputError("give at least one --slo, e.g. --slo 'p95(ttft)<2s'")
    slos = parse_thresholds(slo)
    if run is not None:
        profile = _profile_from_run(run, concurrency)
    elif sweep is not None:
        profile = _profile_from_sweep(sweep, concurrency)
    else:
        if model is None:
            raise InputError("estimate mode needs --model with --gpu")
        profile = _profile_from_estimate(
            str(gpu), model, quant, prompt_tokens, max_tokens, concurrency, calibration
        )
    result = plan_replicas(
        profile, rate, slos, headroom=headroom, gpus_per_replica=gpus_per_replica
    )
    stdout_console().print(plan_table(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    if result.chosen is None:
        raise typer.Exit(1)


def _profile_from_run(run_dir: Path, concurrency: int | None) -> Any:
    from capplan.errors import InputError
    from capplan.planning.plan import profile_from_run
    from capplan.regression.runs import load_run
    from capplan.regression.stats import per_request_values

    loaded = load_run(run_dir)
    if loaded.summary.is_ladder:
        raise InputError(f"'{run_dir}' is a ladder; plan from a single-step run or a sweep")
    slots = concurrency or _run_concurrency(loaded.summary)
    if slots is None:
        raise InputError(
            f"'{run_dir}' is not a closed-loop run at one concurrency; pass --concurrency "
            "(the server's concurrent request limit)"
        )
    e2e = per_request_values(loaded.records, "e2e_ms").tolist()
    return profile_from_run(loaded.summary, slots=slots, e2e_ms=e2e, source=f"measured: {run_dir}")


def _run_concurrency(summary: RunSummary) -> int | None:
    """The concurrency of a single closed-loop step, from its numeric load."""
    load = summary.whole.load
    return load.concurrency if load is not None and load.kind == "closed" else None


def _profile_from_sweep(sweep_dir: Path, concurrency: int | None) -> Any:
    from capplan.errors import InputError
    from capplan.planning.sweep import read_sweep

    path, data = read_sweep(sweep_dir)
    if data.get("axis") != "concurrency":
        raise InputError("plan needs a concurrency sweep (an arrival-rate sweep has no slots)")
    safe = data.get("highest_safe")
    if safe is None:
        raise InputError("the sweep found no safe concurrency; lower --start or relax the SLOs")
    point = next(p for p in data["points"] if p["load"] == safe)
    # Run directories are recorded as the sweep was given them; from another working directory
    # they are found beside sweep.json.
    runs = [Path(d) if Path(d).is_dir() else path.parent / Path(d).name for d in point["run_dirs"]]
    if len(runs) == 1 or concurrency is not None:
        return _profile_from_run(runs[0], concurrency or int(safe))
    return _profile_from_repeats(runs, point["figures"], int(safe), sweep_dir)


def _profile_from_repeats(
    runs: list[Path], figures: dict[str, float], slots: int, sweep_dir: Path
) -> Any:
    """A point measured several times: the sweep's median figures, every repeat's requests."""
    from capplan.errors import InputError
    from capplan.planning.plan import ServiceProfile, service_cv2
    from capplan.regression.runs import load_run
    from capplan.regression.stats import per_request_values

    e2e = [v for run in runs for v in per_request_values(load_run(run).records, "e2e_ms")]
    mean_e2e = figures.get("mean_e2e_ms")
    if not mean_e2e:
        raise InputError(f"the sweep point has no mean e2e_ms; rerun `capplan sweep` ({sweep_dir})")
    source = f"measured: {sweep_dir}, {len(runs)} repeats at concurrency {slots}"
    return ServiceProfile(slots, mean_e2e / 1000.0, service_cv2(e2e), figures, source)


def _profile_from_estimate(
    gpu: str,
    model: str,
    quant: str | None,
    prompt_tokens: int,
    max_tokens: int,
    concurrency: int | None,
    calibration: str | None = None,
) -> Any:
    """The estimator's own figures: its recommended max_concurrent (KV fit, capped where decode
    turns compute bound) as the slots, and its roofline step with the batch's matmul floor."""
    from capplan.errors import InputError
    from capplan.estimate.calibration import read_profile
    from capplan.estimate.options import EstimateOptions, estimate_from_options
    from capplan.estimate.service_timing import service_timing
    from capplan.planning.plan import profile_from_timing

    result = estimate_from_options(
        EstimateOptions(
            model=model,
            gpu=gpu,
            quant=quant,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            calibration=calibration,
        )
    )
    if result.concurrency < 1:
        raise InputError(
            f"{model} on {gpu}: no request of {prompt_tokens}+{max_tokens} tokens fits "
            "(capplan estimate shows why); shorten the workload or pick a larger GPU"
        )
    slots = concurrency or result.settings.max_concurrent
    profile = read_profile(calibration) if calibration else None
    timing = service_timing(gpu, model, quant=quant, calibration=profile)
    return profile_from_timing(
        slots=slots,
        prompt_tokens=prompt_tokens,
        output_tokens=max_tokens,
        prefill_ms=timing.prefill_ms(prompt_tokens),
        overhead_ms=timing.overhead_ms,
        decode_step_ms=lambda kv_tokens: timing.decode_step_ms(kv_tokens, slots),
        source=f"estimate: {model} on {gpu}, {prompt_tokens}+{max_tokens} tokens, "
        f"max_concurrent {result.settings.max_concurrent} ({result.concurrency_bound}); "
        f"timing {'calibrated' if timing.calibrated else 'uncalibrated'}",
    )
