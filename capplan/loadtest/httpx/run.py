"""The httpx engine's run: every step of a LoadConfig through asyncio, one coroutine per request.

What all engines share (the run folder, target, prompts, schedule, the end) is in
`capplan.loadtest.run`; this module is the asyncio loop that drives `engine` step by step.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capplan.loadtest.backoff import backoff_how
from capplan.loadtest.clock import RunClock
from capplan.loadtest.httpx import engine
from capplan.loadtest.httpx.engine import StopFlag
from capplan.loadtest.httpx.selfcheck import LoopMonitor
from capplan.loadtest.live import LiveStats
from capplan.loadtest.probe import preflight
from capplan.loadtest.prompts import PromptBuilder, load_tokenizer, token_counter
from capplan.loadtest.record import RecordWriter, RequestRecord
from capplan.loadtest.request import Target
from capplan.loadtest.run import (
    ProgressCallback,
    RunResult,
    extension_offsets,
    finish_run,
    launched_target,
    prepare_out_dir,
    prompt_builder,
    request_target,
    run_config,
    save_run_config,
    scrape_server,
    start_sampler,
    step_offsets,
    step_specs,
    window_plan,
)
from capplan.loadtest.scenario import LoadConfig, LoadStep
from capplan.loadtest.server_view import attach_server_view
from capplan.loadtest.sse import TokenCounter
from capplan.loadtest.stop import StopRules
from capplan.loadtest.summary import (
    attach_load_model_runs,
    collect_environment,
    load_model_run,
    summarize,
)

if TYPE_CHECKING:
    from capplan.loadtest.telemetry.sampler import TelemetrySampler

PROGRESS_INTERVAL_S = 0.5


def run_load(
    config: LoadConfig,
    *,
    out_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    handle_signals: bool = True,
    reports: bool = True,
) -> RunResult:
    """Runs every step of `config`; Ctrl-C (or SIGTERM) stops early and keeps what finished, and
    so does a broken target (`RunResult.stopped`, `capplan.loadtest.stop`). Raises
    `TargetError` when the target does not answer before the first step (`probe.preflight`).

    `reports=False` skips report.md/html and parquet (`capplan report RUN_DIR` builds them later).
    """
    out = prepare_out_dir(config, out_dir)
    with launched_target(config, out) as url:
        config = replace(config, url=url)
        run = _Run(config, out, progress)
        handle_signals = handle_signals and threading.current_thread() is threading.main_thread()
        asyncio.run(run.main(handle_signals))
    return run.finish(reports=reports)


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
        self.stopped: dict[str, str] | None = None
        self.sampler: TelemetrySampler | None = None  # from the first step on
        self.model_name = config.model_name
        self.run_id = out.name
        self.started = self.clock.now()
        self.server_before: dict[str, float] | None = None
        self.server_after: dict[str, float] | None = None

    async def main(self, handle_signals: bool) -> None:
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
            self.interrupted = stop.is_set and self.stopped is None

    def _on_signal(self, stop: Any, loop: asyncio.AbstractEventLoop) -> None:
        stop.set()
        # A second Ctrl-C is the default one: the user really wants out.
        loop.remove_signal_handler(signal.SIGINT)

    async def _steps(self, stop: Any) -> None:
        config = self.config
        assert config.url is not None
        counter = token_counter(load_tokenizer(config.tokenizer))
        builder = prompt_builder(config)
        target = request_target(config, config.model_name or "default")
        async with engine.ClientPool(target) as clients:
            client = clients.acquire()
            listed = await preflight(client, target, builder.build(0))
            clients.release(client)
            self.model_name = self.model_name or listed or "default"
            target = replace(target, model_name=self.model_name)
            await self._load(clients, target, builder, counter, stop)

    async def _load(
        self,
        clients: engine.ClientPool,
        target: Target,
        builder: PromptBuilder,
        counter: TokenCounter | None,
        stop: StopFlag,
    ) -> None:
        config, steps = self.config, self.config.steps
        live = LiveStats(self.clock.now(), len(steps))
        self.sampler = start_sampler(self.clock, self.out, config.url)
        monitor = LoopMonitor()
        monitor.start()
        writer = RecordWriter(self.out / "requests.jsonl")
        reporter = asyncio.ensure_future(self._report_progress(live))
        rules = {"now": StopRules()}  # the current step's

        def on_record(record: RequestRecord) -> None:
            writer.write(record)
            self.records.append(record)
            live.on_record(record)
            reason = rules["now"].observe(record)
            if reason is not None and self.stopped is None:
                self.stopped = {"step": record.step, "reason": reason}
                stop.set()  # in-flight requests are dropped: they would only say the same

        kwargs: dict[str, Any] = dict(
            clock=self.clock, on_record=on_record, stop=stop, on_send=live.on_send,
            count_tokens=counter,
        )  # fmt: skip
        try:
            save_run_config(self.out, config, self.model_name)
            self.server_before = await asyncio.to_thread(scrape_server, config.url)
            for index, step in enumerate(steps):
                if stop.is_set:
                    break
                rules["now"] = StopRules()
                live.begin_step(step.label, index)
                monitor.begin_step()
                offsets = await self._step(clients, target, builder, index, step, kwargs)
                self.selfcheck[step.label] = monitor.step_report()
                self.ran[step.label] = load_model_run("httpx", *_how(config, step, offsets))
        finally:
            reporter.cancel()
            await monitor.stop()
            writer.close()
            if self.server_before is not None:
                self.server_after = await asyncio.to_thread(scrape_server, config.url)
            await asyncio.to_thread(self._stop_sampler)

    async def _step(
        self,
        clients: engine.ClientPool,
        target: Target,
        builder: PromptBuilder,
        index: int,
        step: LoadStep,
        kwargs: dict[str, Any],
    ) -> list[float] | None:
        """Runs one step; returns its open-loop schedule (None for a closed loop)."""
        config = self.config
        offsets = step_offsets(config, step, index)
        plan = engine.StepPlan(
            step=step.label,
            specs=step_specs(builder, config, len(offsets) if offsets is not None else None),
            requests=config.requests,
            window=window_plan(config, step),
            id_prefix=f"s{index}-",
        )
        if offsets is None:
            await engine.run_closed_step(
                clients, target, plan, step.concurrency, stagger_s=config.stagger_s,
                backoff=config.backoff, max_retries=config.max_retries, **kwargs,
            )  # fmt: skip
        else:
            extra = extension_offsets(config, step, index, offsets)
            await engine.run_open_step(
                clients, target, plan, offsets, extension_offsets=extra, **kwargs
            )
        return offsets

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
            stopped=self.stopped,
        )
        summary["started_at"] = self.started
        summary["ended_at"] = self.clock.now()
        attach_load_model_runs(summary, self.ran)
        attach_server_view(summary, self.server_before, self.server_after, self.records)
        result = finish_run(
            self.out, summary, self.records, interrupted=self.interrupted, reports=reports
        )
        result.stopped = self.stopped
        return result


def _how(config: LoadConfig, step: LoadStep, offsets: list[float] | None) -> tuple[str, str]:
    """The load model the httpx engine ran for `step`: (mode, how) for `load_model_run`."""
    if offsets is None:
        how = (
            f"closed loop: {step.concurrency} asyncio workers; each sends its next request "
            "when its previous one ends"
        )
        return "closed", how + backoff_how(config.backoff, config.max_retries)
    shape = f"ramp {step.rate:g}->{step.ramp_to:g} req/s" if step.kind == "ramp" else config.arrival
    return "open", (
        f"open loop: {len(offsets)} scheduled arrivals ({shape}); each sent at its intended "
        "start, never waiting for answers, never resent"
    )
