"""The Locust child process: a local runner, a master, or a worker, driven through Locust's
library API (headless; web UI only when asked).

Message flow between master and workers (Locust's `send_message`/`register_message`):

    master -> worker  capplan_job      the step (LocustJob); worker answers capplan_ready
    master -> worker  capplan_go       its Share (slots or arrival stride, t0 on its clock)
    worker -> master  capplan_records  finished records, in batches, as they finish
    worker -> master  capplan_done     after its last record: how many it sent

The master writes each record to requests.jsonl the moment it arrives, once per request_id,
and ends the step when every worker's done count matches the records it received from it.
Imports gevent (through locust): never imported by the capplan process.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from locust.env import Environment
from locust.log import setup_logging
from locust.runners import MasterRunner, WorkerRunner

from capplan.loadtest.backoff import MAX_RETRY_AFTER_S
from capplan.loadtest.clock import RunClock
from capplan.loadtest.locust.job import LocustJob, Share
from capplan.loadtest.locust.selfcheck import client_check
from capplan.loadtest.locust.user import WorkerState, hostname, make_user_class
from capplan.loadtest.record import RecordWriter, RequestRecord

log = logging.getLogger("capplan.locust")

SHIP_INTERVAL_S = 0.1  # how often a worker sends its finished records to the master
SPAWN_REPORT_TIMEOUT_S = 15.0
START_MARGIN_S = 0.3  # t0 lies this far ahead of the go message, so every worker starts on time
# Same-host clocks agree to well under this; only a larger measured offset (another machine
# without NTP) is corrected, so local runs carry no correction noise.
CLOCK_OFFSET_MIN_S = 0.002


@dataclass
class StepReport:
    """What the master learned about one step; the parent puts it in summary.json."""

    step: str
    mode: str
    workers: int
    users: int
    records: int = 0
    duplicates_dropped: int = 0
    per_worker: dict[str, int] = field(default_factory=dict)
    clock_offsets_ms: dict[str, float] = field(default_factory=dict)
    complete: bool = False  # every planned request was sent (extensions and resends aside)
    problem: str | None = None
    stopped: str | None = None  # the target looked broken (capplan.loadtest.stop): run stops
    client: dict[str, Any] = field(default_factory=dict)  # per-worker self-check, worst decides


class FileSink:
    """Records straight to requests.jsonl: the local runner's sink."""

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer

    def add(self, record: RequestRecord) -> None:
        self.writer.write(record)


class ShippingSink:
    """A worker's sink: batches finished records to the master every SHIP_INTERVAL_S."""

    def __init__(self, runner: WorkerRunner) -> None:
        self.runner = runner
        self.pending: list[dict[str, Any]] = []
        self.shipped = 0
        self._loop = gevent.spawn(self._ship_forever)

    def add(self, record: RequestRecord) -> None:
        self.pending.append(asdict(record))

    def flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.runner.send_message("capplan_records", {"records": batch})
            self.shipped += len(batch)

    def _ship_forever(self) -> None:
        while True:
            gevent.sleep(SHIP_INTERVAL_S)
            self.flush()


class NullSink:
    """The master spawns no users; its user class (needed by name) never sends."""

    def add(self, record: RequestRecord) -> None:
        raise RuntimeError("the Locust master sends no requests")


def _environment(state: WorkerState | None, host: str) -> Environment:
    user_class = make_user_class(state or WorkerState(RunClock(), NullSink()))
    return Environment(user_classes=[user_class], host=host, stop_timeout=0.0)


def _start_ui(env: Environment, ui_port: int | None) -> None:
    if ui_port:
        # Locust's web UI re-parses sys.argv with Locust's own parser (for its extra-argument
        # form); this child's argv is capplan's, already read, so hand it an empty one.
        del sys.argv[1:]
        env.create_web_ui("127.0.0.1", ui_port)
        log.warning(
            "Locust web UI (figures rounded; capplan's own are exact): http://127.0.0.1:%d", ui_port
        )


def run_local(job: LocustJob, records_path: Path, *, ui_port: int | None = None) -> StepReport:
    """One process, no workers: Locust's LocalRunner."""
    clock = RunClock()
    report = StepReport(job.step, job.mode, workers=1, users=_users_for(job, 1))
    with RecordWriter(records_path) as writer:
        state = WorkerState(clock, FileSink(writer))
        env = _environment(state, job.url)
        state.fire_event = env.events.request.fire
        runner = env.create_local_runner()
        _start_ui(env, ui_port)
        runner.start(report.users, spawn_rate=max(report.users, 1) * 1000.0, wait=False)
        share = Share(
            worker=f"{hostname()}/local",
            position=0,
            n_workers=1,
            slots=tuple(range(job.users)),
            t0=clock.now() + START_MARGIN_S,
        )
        state.begin(job, share, local_users=report.users)
        state.finished.wait()
        report.records = writer.count
        report.per_worker = {share.worker: writer.count}
        report.client = client_check({share.worker: state.selfcheck})
        report.complete = job.total is None or state.planned_done >= job.total
        report.stopped = state.stopped
        runner.quit()
        state.close()
    return report


def _users_for(job: LocustJob, n_workers: int) -> int:
    """Locust users to spawn: the concurrency (closed), or one pacer per worker (open)."""
    return job.users if job.mode == "closed" else n_workers


class Collector:
    """The master's side of record shipping: exactly once per request_id, as they arrive."""

    def __init__(self, writer: RecordWriter, clock: RunClock) -> None:
        self.writer = writer
        self.clock = clock
        self.seen: set[str] = set()
        self.received: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.planned: dict[str, int] = {}
        self.stopped: dict[str, str] = {}
        self.client: dict[str, dict[str, Any]] = {}
        self.ready: set[str] = set()
        self.offsets: dict[str, float] = {}  # worker clock minus master clock (s)
        self.job_sent_at: dict[str, float] = {}
        self.duplicates = 0
        self.last_activity = time.monotonic()
        self.changed = gevent.event.Event()

    def on_ready(self, environment: Environment, msg: Any) -> None:
        now = self.clock.now()
        sent = self.job_sent_at.get(msg.node_id, now)
        # NTP-style: the worker read its clock about halfway through the round trip.
        offset = float(msg.data["now"]) - (sent + now) / 2.0
        self.offsets[msg.node_id] = offset if abs(offset) >= CLOCK_OFFSET_MIN_S else 0.0
        self.ready.add(msg.node_id)
        self.changed.set()

    def on_records(self, environment: Environment, msg: Any) -> None:
        shift = self.offsets.get(msg.node_id, 0.0)
        for data in msg.data["records"]:
            record = RequestRecord.from_dict(data)
            if record.request_id in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(record.request_id)
            if shift:
                _shift(record, -shift)
            self.writer.write(record)
            self.received[msg.node_id] = self.received.get(msg.node_id, 0) + 1
        self.last_activity = time.monotonic()
        self.changed.set()

    def on_done(self, environment: Environment, msg: Any) -> None:
        self.done[msg.node_id] = int(msg.data["sent"])
        self.planned[msg.node_id] = int(msg.data.get("planned", msg.data["sent"]))
        if msg.data.get("stopped"):
            self.stopped[msg.node_id] = str(msg.data["stopped"])
        self.client[msg.node_id] = dict(msg.data.get("client") or {})
        self.last_activity = time.monotonic()
        self.changed.set()

    def all_done(self, workers: list[str]) -> bool:
        return all(w in self.done and self.received.get(w, 0) >= self.done[w] for w in workers)


def _shift(record: RequestRecord, delta: float) -> None:
    record.send += delta
    record.end += delta
    record.chunk_times = [t + delta for t in record.chunk_times]
    if record.intended_start is not None:
        record.intended_start += delta
    if record.first_byte is not None:
        record.first_byte += delta
    if record.first_token is not None:
        record.first_token += delta


def run_master(
    job: LocustJob,
    records_path: Path,
    *,
    expect_workers: int,
    bind_host: str,
    port: int,
    connect_timeout_s: float = 60.0,
    ui_port: int | None = None,
) -> StepReport:
    """Waits for the workers, hands out the step, collects every record, then quits them."""
    clock = RunClock()
    env = _environment(None, job.url)
    runner = env.create_master_runner(bind_host, port)
    assert isinstance(runner, MasterRunner)
    _start_ui(env, ui_port)
    report = StepReport(job.step, job.mode, workers=expect_workers, users=0)
    with RecordWriter(records_path) as writer:
        collector = Collector(writer, clock)
        runner.register_message("capplan_ready", collector.on_ready)
        runner.register_message("capplan_records", collector.on_records)
        runner.register_message("capplan_done", collector.on_done)
        try:
            _wait(lambda: len(runner.clients.ready) >= expect_workers, connect_timeout_s)
        except TimeoutError:
            report.problem = (
                f"only {len(runner.clients.ready)} of {expect_workers} Locust workers connected "
                f"within {connect_timeout_s:g}s"
            )
            runner.quit()
            return report
        # Every connected worker takes part (Locust dispatches users to all of them anyway).
        workers = sorted(c.id for c in runner.clients.ready)
        for worker in workers:
            collector.job_sent_at[worker] = clock.now()
            runner.send_message("capplan_job", job.to_dict(), client_id=worker)
        try:
            _wait(lambda: collector.ready >= set(workers), connect_timeout_s, collector.changed)
        except TimeoutError:
            report.problem = f"workers did not take the job within {connect_timeout_s:g}s"
            runner.quit()
            return report

        users = _users_for(job, len(workers))
        runner.start(users, spawn_rate=max(users, 1) * 1000.0)

        def spawned() -> dict[str, int]:
            return {w: sum(runner.clients[w].user_classes_count.values()) for w in workers}

        # start() waits only 1 s for the workers' spawn reports; a loaded machine needs longer.
        with contextlib.suppress(TimeoutError):
            _wait(lambda: sum(spawned().values()) >= users, SPAWN_REPORT_TIMEOUT_S)
        counts = spawned()
        if sum(counts.values()) != users:
            report.problem = f"Locust spawned {sum(counts.values())} of {users} users"
        active = [w for w in workers if counts[w] > 0]
        report.users = sum(counts.values())
        report.workers = len(active)
        t0 = clock.now() + START_MARGIN_S
        next_slot = 0
        names: dict[str, str] = {}
        for position, worker in enumerate(active):
            n = counts[worker]
            slots = tuple(range(next_slot, next_slot + n)) if job.mode == "closed" else ()
            next_slot += n
            # Locust's client id is hostname_uuid: keep the host, number the worker.
            names[worker] = f"{worker.rsplit('_', 1)[0]}/{position}"
            share = Share(
                worker=names[worker],
                position=position,
                n_workers=len(active),
                slots=slots,
                t0=t0 + collector.offsets.get(worker, 0.0),
            )
            local_users = n if job.mode == "closed" else 1
            data = {"share": share.to_dict(), "local_users": local_users}
            runner.send_message("capplan_go", data, client_id=worker)
        report.clock_offsets_ms = {
            names[w]: round(collector.offsets.get(w, 0.0) * 1000.0, 3) for w in active
        }
        # Silence longer than a request may take, plus the longest planned pause (an arrival
        # gap, a backoff), is a stall.
        arrivals = job.arrivals + job.extension_arrivals
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        stall_s = job.timeout_s + 30.0 + max([*gaps, MAX_RETRY_AFTER_S])
        while not collector.all_done(active):
            collector.changed.clear()
            collector.changed.wait(timeout=1.0)
            if time.monotonic() - collector.last_activity > stall_s:
                report.problem = f"no record or progress from the workers for {stall_s:g}s"
                break
            if runner.worker_count < len(active) and not collector.all_done(active):
                missing = [w for w in active if w not in runner.clients or w not in collector.done]
                if all(w not in runner.clients for w in missing):
                    report.problem = f"worker(s) lost before finishing: {', '.join(missing)}"
                    break
        report.records = writer.count
        report.duplicates_dropped = collector.duplicates
        report.per_worker = {names.get(w, w): n for w, n in collector.received.items()}
        report.client = client_check({names.get(w, w): c for w, c in collector.client.items()})
        report.complete = report.problem is None and (
            job.total is None or sum(collector.planned.values()) >= job.total
        )
        report.stopped = next(iter(collector.stopped.values()), None)
        runner.quit()
    return report


def run_worker(master_host: str, master_port: int) -> None:
    """Connects to a master and serves its steps until the master says quit."""
    clock = RunClock()
    state_box: dict[str, LocustJob] = {}
    state = WorkerState(clock, NullSink())
    env = _environment(state, "http://127.0.0.1")
    state.fire_event = env.events.request.fire
    runner = env.create_worker_runner(master_host, master_port)
    assert isinstance(runner, WorkerRunner)
    sink = ShippingSink(runner)
    state.sink = sink

    def on_job(environment: Environment, msg: Any) -> None:
        state_box["job"] = LocustJob.from_dict(msg.data)
        runner.send_message("capplan_ready", {"now": clock.now()})

    def on_go(environment: Environment, msg: Any) -> None:
        share = Share.from_dict(msg.data["share"])
        state.begin(state_box["job"], share, local_users=int(msg.data["local_users"]))
        gevent.spawn(_report_done)

    def _report_done() -> None:
        state.finished.wait()
        sink.flush()
        runner.send_message(
            "capplan_done",
            {
                "sent": state.done,
                "planned": state.planned_done,
                "stopped": state.stopped,
                "client": state.selfcheck,
            },
        )

    runner.register_message("capplan_job", on_job)
    runner.register_message("capplan_go", on_go)
    runner.greenlet.join()
    state.close()


def _wait(condition: Any, timeout_s: float, event: gevent.event.Event | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        if event is not None:
            event.clear()
            event.wait(timeout=0.05)
        else:
            gevent.sleep(0.02)


def write_report(report: StepReport, path: Path) -> None:
    path.write_text(json.dumps(asdict(report)), encoding="utf-8")


class _NoSpawnRateWarning(logging.Filter):
    """capplan spawns every user at once on purpose (they wait for t0); the warning misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


def configure_logging(level: str = "WARNING") -> None:
    setup_logging(level)
    logging.getLogger("locust.runners").addFilter(_NoSpawnRateWarning())
