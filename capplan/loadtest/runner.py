"""Running a load test from code: `load_scenario` then `run_load` (docs/architecture.md).

Records are appended to requests.jsonl as requests finish; summary.json is written at the end,
also after Ctrl-C (from what finished); reports and telemetry come from their own modules,
imported lazily, when a run uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capplan.loadtest.arrival import schedule
from capplan.loadtest.clock import RunClock
from capplan.loadtest.live import LiveStats, ProgressSnapshot
from capplan.loadtest.prompts import PromptBuilder, load_tokenizer, make_prompts, token_counter
from capplan.loadtest.record import RecordWriter, RequestRecord
from capplan.loadtest.scenario import LoadConfig, LoadStep, build_config, read_scenario
from capplan.loadtest.selfcheck import LoopMonitor
from capplan.loadtest.summary import (
    attach_load_model_runs,
    collect_environment,
    load_model_run,
    summarize,
    write_json,
)

if TYPE_CHECKING:
    from capplan.loadtest.httpx_engine import Target
    from capplan.loadtest.telemetry.sampler import TelemetrySampler

SPEC_POOL_MAX = 1024  # distinct prompts built per step before it starts; cycled beyond
SPEC_POOL_DURATION_ONLY = 256
PROGRESS_INTERVAL_S = 0.5
STALE_FILES = ("requests.jsonl", "summary.json", "telemetry.csv", "config.json")

ProgressCallback = Callable[[ProgressSnapshot], None]


@dataclass
class RunResult:
    out_dir: Path
    summary: dict[str, Any]
    records: list[RequestRecord]
    interrupted: bool = False
    reports: list[Path] = field(default_factory=list)
    report_error: str | None = None


def load_scenario(path_or_name: str | Path | None, overrides: Mapping[str, Any]) -> LoadConfig:
    """A scenario file (or none: flags alone) with flag overrides applied."""
    values = read_scenario(path_or_name) if path_or_name else {}
    return build_config(values, overrides)


def default_out_dir(config: LoadConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("reports") / f"{stamp}-{config.name}"


def run_load(
    config: LoadConfig,
    *,
    out_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    handle_signals: bool = True,
    reports: bool = True,
) -> RunResult:
    """Runs every step of `config`; Ctrl-C (or SIGTERM) stops early and keeps what finished.

    `reports=False` skips report.md/html and parquet (`capplan report RUN_DIR` builds them later).
    """
    out = prepare_out_dir(config, out_dir)
    with launched_target(config, out) as url:
        config = replace(config, url=url)
        run = _Run(config, out, progress)
        handle_signals = handle_signals and threading.current_thread() is threading.main_thread()
        asyncio.run(run.main(handle_signals))
    return run.finish(reports=reports)


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
    from capplan.loadtest.httpx_engine import Target

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


def attach_server_view(
    summary: dict[str, Any],
    before: Mapping[str, float] | None,
    after: Mapping[str, float] | None,
    records: list[RequestRecord],
) -> None:
    """`server_view` in the summary: the server's own means beside the client's."""
    from capplan.loadtest.server_view import server_view

    view = server_view(before, after, records)
    if view is not None:
        summary["server_view"] = view


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


class _Run:
    def __init__(self, config: LoadConfig, out: Path, progress: ProgressCallback | None) -> None:
        self.config = config
        self.out = out
        self.progress = progress
        self.clock = RunClock()
        self.records: list[RequestRecord] = []
        self.selfcheck: dict[str, dict[str, Any]] = {}
        self.ran: dict[str, dict[str, str]] = {}  # step label -> load_model_run
        self.interrupted = False
        self.sampler: TelemetrySampler | None = None  # from the first step on
        self.model_name = config.model_name
        self.run_id = out.name
        self.started = self.clock.now()
        self.server_before: dict[str, float] | None = None
        self.server_after: dict[str, float] | None = None

    async def main(self, handle_signals: bool) -> None:
        from capplan.loadtest.httpx_engine import StopFlag

        stop = StopFlag()
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, stop, loop)
        try:
            await self._steps(stop)
        finally:
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            self.interrupted = stop.is_set

    def _on_signal(self, stop: Any, loop: asyncio.AbstractEventLoop) -> None:
        stop.set()
        # A second Ctrl-C is the default one: the user really wants out.
        loop.remove_signal_handler(signal.SIGINT)

    async def _steps(self, stop: Any) -> None:
        from capplan.loadtest import httpx_engine as engine

        config = self.config
        assert config.url is not None
        counter = token_counter(load_tokenizer(config.tokenizer))
        builder = prompt_builder(config)
        steps = config.steps
        live = LiveStats(self.clock.now(), len(steps))
        self.sampler = start_sampler(self.clock, self.out, config.url)
        monitor = LoopMonitor()
        monitor.start()
        writer = RecordWriter(self.out / "requests.jsonl")
        reporter = asyncio.ensure_future(self._report_progress(live))

        def on_record(record: RequestRecord) -> None:
            writer.write(record)
            self.records.append(record)
            live.on_record(record)

        target = request_target(config)
        try:
            async with engine.ClientPool(target) as clients:
                if self.model_name is None:
                    client = clients.acquire()
                    self.model_name = await engine.discover_model(client) or "default"
                    clients.release(client)
                target = replace(target, model_name=self.model_name)
                save_run_config(self.out, config, self.model_name)
                self.server_before = await asyncio.to_thread(scrape_server, config.url)
                for index, step in enumerate(steps):
                    if stop.is_set:
                        break
                    live.begin_step(step.label, index)
                    offsets = step_offsets(config, step, index)
                    plan = engine.StepPlan(
                        step=step.label,
                        specs=step_specs(
                            builder, config, len(offsets) if offsets is not None else None
                        ),
                        requests=config.requests,
                        duration_s=config.duration_s,
                        warmup_s=config.warmup_s,
                        id_prefix=f"s{index}-",
                    )
                    monitor.begin_step()
                    kwargs: dict[str, Any] = dict(
                        clock=self.clock,
                        on_record=on_record,
                        stop=stop,
                        on_send=live.on_send,
                        count_tokens=counter,
                    )
                    if offsets is None:
                        await engine.run_closed_step(
                            clients,
                            target,
                            plan,
                            step.concurrency,
                            stagger_s=config.stagger_s,
                            honor_retry_after=config.honor_retry_after,
                            **kwargs,
                        )
                    else:
                        await engine.run_open_step(clients, target, plan, offsets, **kwargs)
                    self.selfcheck[step.label] = monitor.step_report()
                    self.ran[step.label] = load_model_run("httpx", *_how(config, step, offsets))
        finally:
            reporter.cancel()
            await monitor.stop()
            writer.close()
            if self.server_before is not None:
                self.server_after = await asyncio.to_thread(scrape_server, config.url)
            await asyncio.to_thread(self._stop_sampler)

    async def _report_progress(self, live: LiveStats) -> None:
        if self.progress is None:
            return
        while True:
            latest = self._sampler_latest()
            self.progress(live.snapshot(self.clock.now(), latest))
            await asyncio.sleep(PROGRESS_INTERVAL_S)

    def _sampler_latest(self) -> dict[str, Any]:
        if self.sampler is None:
            return {}
        try:
            return dict(self.sampler.latest() or {})
        except Exception:  # telemetry must never stop a load test
            return {}

    def _stop_sampler(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()

    def finish(self, *, reports: bool = True) -> RunResult:
        summary = summarize(
            self.records,
            run_config(self.config, self.model_name),
            selfcheck=self.selfcheck,
            environment=collect_environment(),
            interrupted=self.interrupted,
            run_id=self.run_id,
        )
        summary["started_at"] = self.started
        summary["ended_at"] = self.clock.now()
        attach_load_model_runs(summary, self.ran)
        attach_server_view(summary, self.server_before, self.server_after, self.records)
        return finish_run(
            self.out, summary, self.records, interrupted=self.interrupted, reports=reports
        )


def _how(config: LoadConfig, step: LoadStep, offsets: list[float] | None) -> tuple[str, str]:
    """The load model the httpx engine ran for `step`: (mode, how) for `load_model_run`."""
    if offsets is None:
        how = (
            f"closed loop: {step.concurrency} asyncio workers; each sends its next request "
            "when its previous one ends"
        )
        if config.honor_retry_after:
            how += ", after a 429/503 once its Retry-After has passed"
        return "closed", how
    shape = f"ramp {step.rate:g}->{step.ramp_to:g} req/s" if step.kind == "ramp" else config.arrival
    return "open", (
        f"open loop: {len(offsets)} scheduled arrivals ({shape}); each sent at its intended "
        "start, never waiting for answers"
    )
