"""What every engine's run shares: the run folder, the target, prompts, schedule, the end.

Running a load test from code: `load_scenario`, then an engine's run (`capplan.loadtest.httpx.run
.run_load` or `capplan.loadtest.locust.engine.run_locust`). Records are appended to
requests.jsonl as requests finish; summary.json is written at the end, also after Ctrl-C (from
what finished); reports and telemetry come from their own modules, imported lazily.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capplan.loadtest.arrival import schedule
from capplan.loadtest.clock import RunClock
from capplan.loadtest.live import ProgressSnapshot
from capplan.loadtest.prompts import PromptBuilder, load_tokenizer, make_prompts
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.request import Target
from capplan.loadtest.scenario import LoadConfig, LoadStep, build_config, read_scenario
from capplan.loadtest.summary import write_json
from capplan.loadtest.window import WindowPlan

if TYPE_CHECKING:
    from capplan.loadtest.telemetry.sampler import TelemetrySampler

SPEC_POOL_MAX = 1024  # distinct prompts built per step before it starts; cycled beyond
SPEC_POOL_DURATION_ONLY = 256
STALE_FILES = ("requests.jsonl", "summary.json", "telemetry.csv", "config.json")

ProgressCallback = Callable[[ProgressSnapshot], None]


@dataclass
class RunResult:
    out_dir: Path
    summary: dict[str, Any]
    records: list[RequestRecord]
    interrupted: bool = False
    stopped: dict[str, str] | None = None  # {"step", "reason"}: the target broke, the run stopped
    reports: list[Path] = field(default_factory=list)
    report_error: str | None = None


def load_scenario(path_or_name: str | Path | None, overrides: Mapping[str, Any]) -> LoadConfig:
    """A scenario file (or none: flags alone) with flag overrides applied."""
    values = read_scenario(path_or_name) if path_or_name else {}
    return build_config(values, overrides)


def default_out_dir(config: LoadConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("reports") / f"{stamp}-{config.name}"


# --- what every engine shares: the run folder, the target, prompts, schedule, the end ---------


def prepare_out_dir(config: LoadConfig, out_dir: str | Path | None) -> Path:
    """The run folder; a rerun into the same folder starts afresh."""
    out = Path(out_dir) if out_dir is not None else default_out_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    for stale in STALE_FILES:
        (out / stale).unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def launched_target(config: LoadConfig, out: Path) -> Iterator[str]:
    """The target's base URL: `--url`, or a reference server launched for the run."""
    if config.launch is None:
        assert config.url is not None  # build_config requires url or launch
        yield config.url
        return
    from capplan.loadtest.launch import launched_server

    with launched_server(config.launch, log_path=out / "server.log") as url:
        yield url


def run_config(config: LoadConfig, model_name: str | None) -> dict[str, Any]:
    """The config as summary.json and config.json record it: with the model and the target."""
    data = config.to_dict()
    data["model_name"] = model_name
    data["target"] = config.url
    return data


def save_run_config(out: Path, config: LoadConfig, model_name: str | None) -> None:
    """config.json, before the first request: `capplan report` rebuilds a killed run's summary
    with it."""
    write_json(out / "config.json", run_config(config, model_name))


def request_target(config: LoadConfig, model_name: str = "default") -> Target:
    """Where and how every engine sends (the httpx engine's Target)."""

    assert config.url is not None
    return Target(
        base_url=config.url,
        endpoint=config.endpoint,
        model_name=model_name,
        stream=config.stream,
        include_usage=config.include_usage,
        ignore_eos=config.ignore_eos,
        temperature=config.temperature,
        api_key=config.api_key,
        timeout_s=config.timeout_s,
    )


def prompt_builder(config: LoadConfig) -> PromptBuilder:
    return make_prompts(
        prompt_tokens=config.prompt_tokens,
        max_tokens=config.max_tokens,
        prompt_file=config.prompt_file,
        tokenizer=load_tokenizer(config.tokenizer),
        seed=config.seed,
    )


def step_offsets(config: LoadConfig, step: LoadStep, index: int) -> list[float] | None:
    """The step's seeded send offsets (open loop and ramp); None for a closed loop."""
    if step.kind == "closed":
        return None
    return schedule(
        rate=step.rate,
        arrival=config.arrival,
        burstiness=config.burstiness,
        seed=f"{config.seed}:{index}",
        requests=config.requests,
        duration_s=config.duration_s,
        ramp_to=step.ramp_to if step.kind == "ramp" else None,
    )


def window_plan(config: LoadConfig, step: LoadStep) -> WindowPlan:
    """The step's warmup, planned duration and extension bound (`capplan.loadtest.window`)."""
    return WindowPlan(
        duration_s=config.duration_s,
        warmup_s=config.warmup_s,
        warmup_requests=config.warmup_requests,
        min_requests=step.min_requests(config.min_requests),
        timeout_s=config.timeout_s,
    )


def extension_offsets(
    config: LoadConfig, step: LoadStep, index: int, planned: list[float]
) -> list[float]:
    """Open loop: the arrivals after the planned schedule, sent only while the step is
    extended to reach its minimum of measured requests (at most one timeout long)."""
    needed = step.min_requests(config.min_requests) + config.warmup_requests
    if needed == 0:
        return []
    if step.kind == "open":
        # The same seeded process, drawn further: its planned part is unchanged.
        end = config.duration_s if config.duration_s is not None else max(planned, default=0.0)
        longer = schedule(
            rate=step.rate,
            arrival=config.arrival,
            burstiness=config.burstiness,
            seed=f"{config.seed}:{index}",
            requests=len(planned) + needed,
            duration_s=end + config.timeout_s,
        )
        return longer[len(planned) :]
    # A ramp goes on at its final rate from its end.
    end = config.duration_s or 0.0
    extra = schedule(
        rate=step.ramp_to,
        arrival=config.arrival,
        burstiness=config.burstiness,
        seed=f"{config.seed}:{index}:extension",
        requests=needed,
        duration_s=config.timeout_s,
    )
    return [end + t for t in extra]


def step_specs(builder: PromptBuilder, config: LoadConfig, scheduled: int | None) -> list[Any]:
    """Prompts built before the step starts, so building them never delays a send."""
    wanted = scheduled if scheduled is not None else config.requests
    count = min(wanted or SPEC_POOL_DURATION_ONLY, SPEC_POOL_MAX)
    return [builder.build(i) for i in range(max(1, count))]


def start_sampler(clock: RunClock, out: Path, target_url: str | None) -> TelemetrySampler:
    """GPU/host telemetry on the requests' clock, started."""
    from capplan.loadtest.telemetry.sampler import TelemetrySampler

    sampler = TelemetrySampler(clock, out / "telemetry.csv", target_url=target_url)
    sampler.start()
    return sampler


def scrape_server(url: str | None) -> dict[str, float] | None:
    """The target's /metrics counters now (None without them): the server's view of the run."""
    if url is None:
        return None
    from capplan.loadtest.server_view import scrape
    from capplan.loadtest.telemetry.target import server_origin

    return scrape(server_origin(url))


def finish_run(
    out: Path,
    summary: dict[str, Any],
    records: list[RequestRecord],
    *,
    interrupted: bool,
    reports: bool,
) -> RunResult:
    """Writes summary.json, then (unless `reports` is False) report.md/html and parquet."""
    write_json(out / "summary.json", summary)
    result = RunResult(out, summary, records, interrupted)
    if not reports:
        return result
    from capplan.loadtest.report.build import build_reports

    try:
        result.reports = build_reports(out, records=records)
    except Exception as exc:  # the summary is already safe on disk; say what failed
        result.report_error = f"{type(exc).__name__}: {exc}"
    return result
