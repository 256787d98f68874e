"""A capplan scenario as a plain Locust file.

    locust -f scenarios/locustfile.py --host http://127.0.0.1:8000
    locust -f scenarios/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -t 60s \\
        --capplan-scenario rag-long-prompt --capplan-out reports/locust-rag

The scenario (`--capplan-scenario` or $CAPPLAN_SCENARIO, default chat-short) supplies the
request bodies (endpoint, prompt and max_tokens distributions, seed); Locust's own options
supply the load: `-u` users in a closed loop, or with `--capplan-rate R` each user paced by
Locust's `constant_throughput(R)`: a busy user delays its next request, so that is *not* an
open loop. For a true open loop (arrivals at their scheduled times whatever is in flight),
ladders, and figures identical to the httpx engine, run `capplan loadtest --engine locust`.

Streams are measured as capplan's engines measure them (each SSE line timed on arrival); in
Locust's tables the endpoint row is end-to-end latency and the `TTFT` row time to first token.
With `--capplan-out DIR`, every request's record goes to DIR/requests.jsonl (workers ship
theirs to the master) and DIR/summary.json is written at the end, so `capplan report DIR`
works. Works with `--master`/`--worker` too: every process needs this file and capplan.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from gevent.lock import BoundedSemaphore
from geventhttpclient import HTTPClient
from locust import User, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from capplan.loadtest.clock import RunClock
from capplan.loadtest.locust.job import LocustJob
from capplan.loadtest.locust.process import Collector, FileSink, ShippingSink
from capplan.loadtest.locust.user import (
    RecordSink,
    discover_model,
    hostname,
    report_to_locust,
    send_request,
)
from capplan.loadtest.record import RecordWriter, read_records


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("capplan")
    group.add_argument(
        "--capplan-scenario",
        default=os.environ.get("CAPPLAN_SCENARIO", "chat-short"),
        help="capplan scenario name or .toml path (default chat-short, or $CAPPLAN_SCENARIO)",
    )
    group.add_argument(
        "--capplan-out",
        default=os.environ.get("CAPPLAN_OUT", ""),
        help="folder for requests.jsonl and summary.json (default: none, Locust stats only)",
    )
    group.add_argument(
        "--capplan-rate",
        type=float,
        default=float(os.environ.get("CAPPLAN_RATE", "0")),
        help="requests/s per user via constant_throughput; 0 (default): closed loop",
    )


def _options(environment: Environment) -> Any:
    if environment.parsed_options is None:  # an Environment built in code, not by `locust`
        raise RuntimeError("run this file with `locust -f`; from code use capplan's engine")
    return environment.parsed_options


class _Plan:
    """Per process: the scenario's request bodies, the HTTP pool, where records go."""

    def __init__(self, environment: Environment) -> None:
        from capplan.loadtest.locust.engine import build_jobs
        from capplan.loadtest.request import auth_headers
        from capplan.loadtest.run import load_scenario

        options = _options(environment)
        host = (environment.host or "").rstrip("/")
        self.config = load_scenario(options.capplan_scenario, {"url": host})
        headers = auth_headers(self.config.api_key)
        model = self.config.model_name or discover_model(host, headers) or "default"
        self.job: LocustJob = build_jobs(self.config, model_name=model)[0]
        self.job.step = "locust"
        self.clock = RunClock()
        self.client = HTTPClient.from_url(
            self.job.url,
            concurrency=10_000,  # never queue inside the client: see locust.user.OPEN_LOOP_POOL
            connection_timeout=self.job.timeout_s,
            network_timeout=self.job.timeout_s,
        )
        runner = environment.runner
        index = runner.worker_index if isinstance(runner, WorkerRunner) else 0
        self.worker = f"{hostname()}/{index}"
        self.prefix = f"w{index}-"
        self.counter = itertools.count()
        self.rate = float(options.capplan_rate or 0.0)


_plans: dict[int, _Plan] = {}  # one per Environment (one per process in practice)
_sinks: dict[int, RecordSink] = {}
_collected: dict[int, tuple[Path, Environment]] = {}


_plan_lock = BoundedSemaphore()


def _plan_for(environment: Environment) -> _Plan:
    key = id(environment)
    if key not in _plans:
        with _plan_lock:  # building one does I/O (model discovery): users spawned together wait
            if key not in _plans:
                _plans[key] = _Plan(environment)
    return _plans[key]


class CapplanUser(User):
    """Sends the scenario's requests one after another (closed loop), optionally paced."""

    def wait_time(self) -> float:
        rate = _plan_for(self.environment).rate
        return float(constant_throughput(rate)(self)) if rate > 0 else 0.0

    @task
    def request(self) -> None:
        plan = _plan_for(self.environment)
        index = next(plan.counter)
        record = send_request(plan.client, plan.job, index, plan.clock)
        record.request_id = f"{plan.prefix}{index}"
        record.worker = plan.worker
        sink = _sinks.get(id(self.environment))
        if sink is not None:
            sink.add(record)
        report_to_locust(self.environment.events.request.fire, record)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    out = (environment.parsed_options.capplan_out or "") if environment.parsed_options else ""
    if not out:
        return
    runner = environment.runner
    key = id(environment)
    if isinstance(runner, WorkerRunner):
        _sinks[key] = ShippingSink(runner)
        return
    path = Path(out) / "requests.jsonl"
    writer = RecordWriter(path)
    _collected[key] = (path, environment)
    if isinstance(runner, MasterRunner):
        collector = Collector(writer, RunClock())
        runner.register_message("capplan_records", collector.on_records)
    else:
        _sinks[key] = FileSink(writer)


@events.test_stopping.add_listener
@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    sink = _sinks.get(id(environment))
    if isinstance(sink, ShippingSink):
        sink.flush()  # the master writes what arrives; nothing may wait in a worker's buffer


@events.quit.add_listener
def _on_quit(exit_code: int, **_: Any) -> None:
    for path, environment in _collected.values():
        _write_summary(path, environment)


def _write_summary(records_path: Path, environment: Environment) -> None:
    from capplan.loadtest.run import load_scenario
    from capplan.loadtest.summary import apply_engine_block, summarize, write_json

    options = _options(environment)
    config = load_scenario(options.capplan_scenario, {"url": environment.host}).to_dict()
    config["target"] = environment.host
    records = read_records(records_path) if records_path.is_file() else []
    summary = summarize(records, config, engine="locust", run_id=records_path.parent.name)
    rate = float(options.capplan_rate or 0.0)
    block = {
        "runner": "locust -f scenarios/locustfile.py",
        "steps": [
            {
                "step": "locust",
                "mode": "closed",
                "how": (
                    f"closed loop paced by constant_throughput({rate:g}) per user: a busy "
                    "user delays its next request (not an open loop)"
                    if rate > 0
                    else "closed loop: Locust's -u users, each sends its next request when its "
                    "previous one ends"
                ),
            }
        ],
    }
    # the `locust` block and each step's load_model_run
    apply_engine_block(summary, "locust", block)
    write_json(records_path.parent / "summary.json", summary)
