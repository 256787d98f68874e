"""`capplan sweep`: the highest load that holds the SLOs, the knee, and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("sweep")(sweep)


def sweep(
    scenario: str | None = typer.Argument(None, help="Scenario name or .toml (optional)."),
    url: str | None = typer.Option(None, help="Target server, e.g. http://127.0.0.1:8000."),
    launch: str | None = typer.Option(
        None,
        help="Start the reference server once for the sweep: its options, e.g. "
        "'--backend emulated --ttft-ms 50 --tpot-ms 20'.",
    ),
    calibration: str | None = typer.Option(
        None,
        help="A `capplan calibrate` profile for a launched emulated server's timing "
        "(added to --launch).",
    ),
    axis: str = typer.Option("concurrency", help="concurrency (closed loop) or rate (open loop)."),
    start: float = typer.Option(1.0, help="First load of the ladder."),
    max_load: float = typer.Option(64.0, "--max", help="Highest load the ladder tries."),
    factor: float = typer.Option(2.0, help="Ladder growth per step (2 doubles)."),
    points: str | None = typer.Option(None, help="Explicit ladder instead, e.g. '1,2,4,8,16'."),
    slo: list[str] = typer.Option(
        [],
        "--slo",
        help="e.g. 'p95(ttft)<2s', 'p95(e2e)<10s', 'error_rate<1%'. Repeatable; "
        "error_rate<1% is added unless an error-rate SLO is given.",
    ),
    bisect: bool = typer.Option(True, help="Bisect between the last pass and first failure."),
    resolution: float = typer.Option(1.0, help="Stop bisecting at this gap."),
    repeats: int = typer.Option(1, help="Runs per point; a point passes when every run does."),
    saturation_gain: float = typer.Option(
        0.05, help="Stop when doubling the load adds less throughput than this (0: never)."
    ),
    requests: int | None = typer.Option(None, help="Requests per point."),
    duration: str | None = typer.Option(None, help="Duration per point, e.g. 30s."),
    prompt_tokens: str | None = typer.Option(None, help="Prompt tokens (value or distribution)."),
    max_tokens: str | None = typer.Option(None, help="Output tokens (value or distribution)."),
    endpoint: str | None = typer.Option(None, help="completions or chat."),
    tokenizer: str | None = typer.Option(
        None, help="'embedded' or a local tokenizer directory (exact prompt lengths)."
    ),
    warmup: str | None = typer.Option(None, help="Trimmed from each point: 5s."),
    timeout: str | None = typer.Option(None, help="Per request: 120s."),
    api_key: str | None = typer.Option(None, envvar="CAPPLAN_API_KEY"),
    out: Path | None = typer.Option(None, help="Sweep directory (default reports/sweep-<time>)."),
    resume: bool = typer.Option(True, help="Reuse points already measured under --out."),
    plot: bool = typer.Option(True, help="Write sweep.png."),
    point_reports: bool = typer.Option(
        False, help="Also build each point's report.html (slower; `capplan report DIR` later)."
    ),
) -> None:
    """Raise the load until an SLO breaks or the server saturates; report the highest safe point.

    Exit 0: a load held every SLO; 1: none did; 2: usage; 3: the target failed (unreachable, a
    point stopped early on it, or no request of the sweep succeeded); 130: interrupted."""
    import time
    from dataclasses import replace

    from rich.console import Console

    from capplan.errors import EXIT_FAILED, EXIT_INTERRUPTED, InputError, TargetError
    from capplan.loadtest.httpx.run import run_load
    from capplan.loadtest.run import launched_target, load_scenario
    from capplan.loadtest.summary_model import RunSummary
    from capplan.loadtest.verdict import target_failure
    from capplan.planning.sweep import SweepInterrupted, SweepSpec, parse_slos, run_sweep
    from capplan.render.console import stdout_console
    from capplan.render.regression import sweep_table

    if axis not in ("concurrency", "rate"):
        raise InputError("--axis must be concurrency or rate")
    ladder = _parse_points(points)
    spec = SweepSpec(
        axis="concurrency" if axis == "concurrency" else "rate",
        slos=parse_slos(slo),
        start=start,
        max_load=max(max_load, max(ladder, default=start)),
        factor=factor,
        ladder=ladder,
        bisect=bisect,
        resolution=resolution,
        repeats=repeats,
        saturation_gain=saturation_gain,
    )
    overrides: dict[str, Any] = {
        "url": url,
        "launch": _with_calibration(launch, calibration),
        "requests": requests,
        "duration": duration,
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "endpoint": endpoint,
        "tokenizer": tokenizer,
        "warmup": warmup,
        "timeout": timeout,
        "api_key": api_key,
    }
    if requests is None and duration is None and scenario is None:
        overrides["requests"] = 50
    config = load_scenario(scenario, overrides)
    out_dir = out or Path("reports") / f"sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    console = Console(stderr=True)

    def on_point(point: Any) -> None:
        verdict = "pass" if point.passed else "fail: " + ", ".join(point.broken)
        reused = " (reused from an earlier run)" if point.resumed else ""
        console.print(f"  {spec.axis}={point.load:g}: {verdict}{reused}", highlight=False)

    workload = _workload(config)
    succeeded: list[Path] = []  # point-runs (measured now) in which some request succeeded
    with launched_target(config, out_dir) as target_url:
        base = replace(config, url=target_url, launch=None, ramp=None)

        def run_point(load: float, repeat: int, run_dir: Path) -> dict[str, Any]:
            if spec.axis == "concurrency":
                cfg = replace(base, concurrency=(int(load),), rate=(), seed=base.seed + repeat)
            else:
                cfg = replace(base, rate=(load,), concurrency=(), seed=base.seed + repeat)
            run = run_load(cfg, out_dir=run_dir, reports=point_reports)
            if run.stopped is not None:  # a broken target: more points would say the same
                failure = target_failure(RunSummary.from_dict(run.summary), run.records)
                raise TargetError(f"{spec.axis}={load:g}: {failure} (records in {run_dir})")
            if any(r.ok for r in run.records):
                succeeded.append(run_dir)
            return run.summary

        try:
            result = run_sweep(
                spec, run_point, out_dir, resume=resume, on_point=on_point, workload=workload,
                plot=plot,
            )  # fmt: skip
        except SweepInterrupted as stop:
            console.print(
                f"{stop}: the points measured so far are kept in {out_dir}; run the same "
                "command again to resume from them"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    stdout_console().print(sweep_table(result))
    if not succeeded and not any(point.resumed for point in result.points):
        raise TargetError(f"no request of the sweep succeeded; see the point-runs in {out_dir}")
    if result.highest_safe is None:
        raise typer.Exit(EXIT_FAILED)


def _workload(config: Any) -> dict[str, Any]:
    """What every point runs, the load aside: a resume must not mix two workloads."""
    data = dict(config.to_dict())
    for key in ("url", "launch", "concurrency", "rate", "ramp", "seed", "api_key", "name",
                "description", "model_name"):  # fmt: skip
        data.pop(key, None)
    return data


def _parse_points(points: str | None) -> tuple[float, ...]:
    from capplan.errors import InputError

    if not points:
        return ()
    try:
        values = tuple(float(p) for p in points.split(",") if p.strip())
    except ValueError:
        raise InputError(f"--points '{points}': write numbers separated by commas") from None
    if any(v <= 0 for v in values):
        raise InputError("--points must all be above 0")
    return values


def _with_calibration(launch: str | None, calibration: str | None) -> str | None:
    """--launch options with `--calibration FILE` added: only the emulated backend uses it."""
    from capplan.errors import InputError

    if calibration is None:
        return launch
    if launch is None or "emulated" not in launch:
        raise InputError(
            "--calibration applies to a launched emulated server (--launch '--backend emulated "
            "--gpu G --emulated-model M'); a real server's timing is measured, not modelled"
        )
    return f"{launch} --calibration {calibration}"
