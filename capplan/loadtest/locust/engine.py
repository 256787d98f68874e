"""The Locust engine: any scenario through Locust's library API, measured as the httpx engine.

Locust runs on gevent and monkey-patches the process that imports it, so the capplan process
never imports it: it resolves each step into a `LocustJob` (the same request bodies, arrival
schedule and request ids as the httpx engine), starts a Locust child process per step
(`python -m capplan.loadtest.locust.child local|master|worker ...`), and builds summary,
telemetry and reports from the merged requests.jsonl exactly as the httpx runner does.

    workers == 0   one child with Locust's LocalRunner
    workers == N   a master child plus N worker children on this machine
    remote == M    the master also waits for M workers from other machines
                   (`capplan locust-worker --master HOST`, see docs/distributed.md)

Top-level imports stay light (stdlib and locust.job): the child's entry point (`child.py`)
imports this file, and gevent must patch the child before anything heavy is imported.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capplan.loadtest.locust.job import LocustJob

if TYPE_CHECKING:
    import subprocess

    from capplan.loadtest.live import ProgressSnapshot
    from capplan.loadtest.run import RunResult
    from capplan.loadtest.scenario import LoadConfig

DEFAULT_MASTER_PORT = 5557  # Locust's own default, for workers on other machines
CONNECT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LocustOptions:
    """How the Locust side is laid out; the CLI's `--locust-*` flags."""

    workers: int = 0  # local worker processes; 0: one process with Locust's LocalRunner
    remote_workers: int = 0  # further workers expected from other machines
    master_bind: str | None = None  # default 127.0.0.1, or 0.0.0.0 with remote workers
    master_port: int | None = None  # default a free port, or 5557 with remote workers
    ui: bool = False
    ui_port: int = 8089
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        from capplan.errors import InputError

        if self.workers < 0 or self.remote_workers < 0:
            raise InputError("--locust-workers and --locust-remote-workers must be 0 or more")
        for name, port in (("--locust-master-port", self.master_port), ("ui port", self.ui_port)):
            if port is not None and not 0 < port < 65536:
                raise InputError(f"{name} must be between 1 and 65535, got {port}")

    @property
    def distributed(self) -> bool:
        return self.workers + self.remote_workers > 0


def build_jobs(config: LoadConfig, *, model_name: str) -> list[LocustJob]:
    """Every step of `config` as a LocustJob: bodies, schedule and ids as the httpx runner's."""
    from capplan.loadtest.request import auth_headers, request_body
    from capplan.loadtest.run import (
        extension_offsets,
        prompt_builder,
        request_target,
        step_offsets,
        step_specs,
    )

    assert config.url is not None
    target = request_target(config, model_name)
    builder = prompt_builder(config)
    headers = auth_headers(config.api_key)
    jobs = []
    for index, step in enumerate(config.steps):
        offsets = step_offsets(config, step, index)
        specs = step_specs(builder, config, len(offsets) if offsets is not None else None)
        jobs.append(
            LocustJob(
                url=config.url.rstrip("/") + target.path,
                endpoint=config.endpoint,
                stream=config.stream,
                bodies=[request_body(target, spec) for spec in specs],
                prompt_tokens=[spec.prompt_tokens for spec in specs],
                mode="closed" if offsets is None else "open",
                step=step.label,
                users=step.concurrency if offsets is None else 1,
                requests=config.requests if offsets is None else None,
                duration_s=config.duration_s,
                arrivals=offsets or [],
                extension_arrivals=(
                    extension_offsets(config, step, index, offsets) if offsets is not None else []
                ),
                warmup_s=config.warmup_s,
                warmup_requests=config.warmup_requests,
                min_requests=step.min_requests(config.min_requests),
                timeout_s=config.timeout_s,
                headers=headers,
                request_id_prefix=f"s{index}-",
                tokenizer=config.tokenizer,
                backoff=config.backoff,
                max_retries=config.max_retries,
            )
        )
    return jobs


def run_locust(
    config: LoadConfig,
    *,
    out_dir: str | Path | None = None,
    options: LocustOptions | None = None,
    progress: Callable[[ProgressSnapshot], None] | None = None,
    reports: bool = True,
) -> RunResult:
    """`run_load` through Locust: same outputs (requests.jsonl, telemetry, summary, reports),
    the same preflight (`TargetError`) and the same stop on a broken target (`stopped`).

    `reports=False` skips report.md/html and parquet, as `run_load`'s.
    """
    from capplan.loadtest.run import launched_target, prepare_out_dir

    options = options or LocustOptions()
    out = prepare_out_dir(config, out_dir)
    with launched_target(config, out) as url:
        config = replace(config, url=url)
        return _LocustRun(config, out, options, progress).run(reports=reports)


class _LocustRun:
    def __init__(
        self,
        config: LoadConfig,
        out: Path,
        options: LocustOptions,
        progress: Callable[[ProgressSnapshot], None] | None,
    ) -> None:
        from capplan.loadtest.clock import RunClock

        self.config = config
        self.out = out
        self.options = options
        self.progress = progress
        self.clock = RunClock()
        self.records_path = out / "requests.jsonl"
        self.locust_dir = out / "locust"
        self.reports: list[dict[str, Any]] = []
        self.interrupted = False
        self.stopped: dict[str, str] | None = None
        self.server_before: dict[str, float] | None = None
        self.server_after: dict[str, float] | None = None

    def run(self, *, reports: bool = True) -> RunResult:
        from capplan.loadtest.live import LiveStats
        from capplan.loadtest.locust import launch
        from capplan.loadtest.run import save_run_config, scrape_server, start_sampler

        started = self.clock.now()
        listed = _preflight(self.config)  # before anything is started: TargetError ends here
        model_name = self.config.model_name or listed or "default"
        jobs = build_jobs(self.config, model_name=model_name)
        save_run_config(self.out, self.config, model_name)
        self.server_before = scrape_server(self.config.url)
        self.locust_dir.mkdir(parents=True, exist_ok=True)
        sampler = start_sampler(self.clock, self.out, self.config.url)
        live = LiveStats(started, len(jobs))
        tail = launch.RecordTail(self.records_path, live, self.clock, self.progress, sampler)
        tail.start()
        try:
            with launch.interrupt_on_sigterm():
                for index, job in enumerate(jobs):
                    live.begin_step(job.step, index)
                    self.reports.append(report := self._run_step(job, index))
                    if report.get("stopped"):
                        self.stopped = {"step": job.step, "reason": str(report["stopped"])}
                        break
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            tail.stop()
            if self.server_before is not None:
                self.server_after = scrape_server(self.config.url)
            sampler.stop()
        return self._finish(model_name, started, reports=reports)

    def _run_step(self, job: LocustJob, index: int) -> dict[str, Any]:
        from capplan.loadtest import child_process
        from capplan.loadtest.locust import launch

        job_path = self.locust_dir / f"step-{index}-job.json"
        report_path = self.locust_dir / f"step-{index}-report.json"
        job.save(job_path)
        report_path.unlink(missing_ok=True)
        common = ["--job", str(job_path), "--records", str(self.records_path)]
        common += ["--report", str(report_path)]
        if self.options.ui:
            common += ["--ui-port", str(self.options.ui_port)]
        opts = self.options
        workers: list[subprocess.Popen[bytes]] = []
        with (self.out / "locust.log").open("ab") as log:
            if not opts.distributed:
                main = child_process.spawn(child_command("local", *common), log)
            else:
                remote = opts.remote_workers > 0
                default_port = DEFAULT_MASTER_PORT if remote else child_process.free_port()
                port = opts.master_port or default_port
                bind = opts.master_bind or ("0.0.0.0" if remote else "127.0.0.1")
                main = child_process.spawn(
                    child_command(
                        "master",
                        *common,
                        "--expect-workers",
                        str(opts.workers + opts.remote_workers),
                        "--bind",
                        bind,
                        "--port",
                        str(port),
                        "--connect-timeout",
                        str(opts.connect_timeout_s),
                    ),
                    log,
                )
                workers = [
                    child_process.spawn(worker_command("127.0.0.1", port), log)
                    for _ in range(opts.workers)
                ]
            try:
                main.wait()
            except KeyboardInterrupt:
                # Every record the master wrote is already on disk; what workers still hold
                # (under 0.1 s of answers) and what is in flight is lost, as with httpx.
                for process in (main, *workers):
                    child_process.stop(process)
                raise
            finally:
                for worker in workers:
                    child_process.stop(
                        worker, grace_s=launch.STOP_GRACE_S if main.returncode == 0 else 0.5
                    )
        if not report_path.is_file():
            raise RuntimeError(
                f"the Locust {'master' if opts.distributed else 'process'} exited with code "
                f"{main.returncode} without a report; see {self.out / 'locust.log'}"
            )
        report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
        problem = report.get("problem")
        if problem and report.get("records", 0) == 0:
            from capplan.errors import InputError

            hint = ""
            if opts.remote_workers:
                hint = (
                    f"; start them with: capplan locust-worker --master <this host> "
                    f"--master-port {port}"
                )
            raise InputError(f"Locust step {job.step or index}: {problem}{hint}")
        report["how"] = _how(job, report)
        return report

    def _finish(self, model_name: str, started: float, *, reports: bool) -> RunResult:
        from capplan.loadtest.record import read_records
        from capplan.loadtest.run import finish_run, run_config
        from capplan.loadtest.server_view import attach_server_view
        from capplan.loadtest.summary import apply_engine_block, collect_environment, summarize

        records = read_records(self.records_path) if self.records_path.is_file() else []
        selfcheck = {r["step"]: r["client"] for r in self.reports if r.get("client")}
        summary = summarize(
            records,
            run_config(self.config, model_name),
            selfcheck=selfcheck,
            environment=collect_environment(),
            interrupted=self.interrupted,
            engine="locust",
            run_id=self.out.name,
            stopped=self.stopped,
        )
        summary["started_at"] = started
        summary["ended_at"] = self.clock.now()
        apply_engine_block(summary, "locust", locust_block(self.options, self.reports))
        attach_server_view(summary, self.server_before, self.server_after, records)
        result = finish_run(
            self.out, summary, records, interrupted=self.interrupted, reports=reports
        )
        result.stopped = self.stopped
        return result


def locust_block(options: LocustOptions, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's `locust` block: the layout, and per step the load model really run."""
    return {
        "version": _locust_version(),
        "runner": "distributed" if options.distributed else "local",
        "local_workers": options.workers,
        "remote_workers": options.remote_workers,
        "steps": reports,
    }


def _locust_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("locust")
    except PackageNotFoundError:
        return "unknown"


def _how(job: LocustJob, report: dict[str, Any]) -> str:
    from capplan.loadtest.backoff import backoff_how

    workers = report.get("workers", 1)
    if job.mode == "closed":
        how = (
            f"closed loop: {report.get('users', job.users)} Locust users on {workers} "
            "process(es); each sends its next request when its previous one ends"
        )
        return how + backoff_how(job.backoff, job.max_retries)
    return (
        f"open loop: {len(job.arrivals)} scheduled arrivals split over {workers} process(es); "
        "a pacer greenlet sends each at its intended start, never waiting for answers, never "
        "resent"
    )


def _preflight(config: LoadConfig) -> str | None:
    """The model the target lists, once it answers (`probe.preflight`); else `TargetError`."""
    from capplan.loadtest.probe import preflight_at
    from capplan.loadtest.run import prompt_builder, request_target

    target = request_target(config, config.model_name or "default")
    return preflight_at(target, prompt_builder(config).build(0))


def child_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "capplan.loadtest.locust.child", *args]


def worker_command(master: str, master_port: int) -> list[str]:
    """The Locust worker process, as `capplan locust-worker` and local workers start it."""
    return child_command("worker", "--master", master, "--master-port", str(master_port))


# --- the child process -----------------------------------------------------------------------
