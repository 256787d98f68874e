"""Inside a Locust process: the user class, and how one request becomes a `RequestRecord`.

Imports gevent (through locust): only the Locust child process imports this module.

Requests go through geventhttpclient directly, not `FastHttpSession`: Locust's session reads a
stream in 1024-byte blocks (`iter_content` blocks until a block fills, which merges SSE events
and moves chunk times), retries and re-verifies statuses. Here each SSE line is read the moment
it arrives and handed, with its arrival time, to the shared `StreamAccumulator`, exactly as the
httpx engine does. Locust's own statistics still get one `request` event per request (E2E) and
one per first token (TTFT), so its UI and CSV show sensible figures.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any, Protocol

import gevent
import gevent.event
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPSocketPoolResponse
from geventhttpclient.url import URL
from locust import User, constant, task
from locust.exception import StopUser

from capplan.errors import InputError
from capplan.loadtest.backoff import Backoff
from capplan.loadtest.clock import RunClock
from capplan.loadtest.closed_loop import ClosedUser
from capplan.loadtest.locust.job import LocustJob, Share
from capplan.loadtest.locust.selfcheck import GeventLoopMonitor
from capplan.loadtest.prompts import load_tokenizer, token_counter
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.sse import (
    MODELS_PATHS,
    StreamAccumulator,
    TokenCounter,
    apply_error_response,
    apply_json_response,
    first_model_id,
    mark_incomplete,
    new_record,
    record_deadline,
    record_failure,
)
from capplan.loadtest.stop import StopRules
from capplan.loadtest.window import StepWindow

# A pool sized to the largest number of requests one worker may hold open: geventhttpclient's
# pool is a semaphore, and a smaller one would queue requests inside the client (hidden
# coordinated omission). Sockets are opened lazily, so a large bound costs nothing.
OPEN_LOOP_POOL = 65_536


class RecordSink(Protocol):
    def add(self, record: RequestRecord) -> None: ...


@dataclass
class WorkerState:
    """Everything the users of one Locust process share for the current step."""

    clock: RunClock
    sink: RecordSink
    job: LocustJob | None = None
    share: Share | None = None
    go: gevent.event.Event = field(default_factory=gevent.event.Event)
    finished: gevent.event.Event = field(default_factory=gevent.event.Event)
    fire_event: Callable[..., None] | None = None  # environment.events.request.fire
    selfcheck: dict[str, Any] = field(default_factory=dict)  # the last step's client check
    sent: int = 0
    done: int = 0
    planned_done: int = 0  # first sends of planned requests (the step is complete at its total)
    window: StepWindow | None = None
    rules: StopRules = field(default_factory=StopRules)
    stopped: str | None = None  # why the target looks broken: no further sends this step
    _client: HTTPClient | None = None
    _planned: Iterator[int] | None = None
    _extra: Iterator[int] | None = None
    _users_claimed: int = 0
    _users_left: int = 0
    _pacer_claimed: bool = False
    _count_tokens: TokenCounter | None = None
    monitor: GeventLoopMonitor = field(default_factory=lambda: GeventLoopMonitor())

    def begin(self, job: LocustJob, share: Share, local_users: int) -> None:
        """Arms the step; users blocked on `go` start at t0."""
        self.job, self.share = job, share
        self.sent = self.done = self.planned_done = self._users_claimed = 0
        self.window = StepWindow(job.window_plan(share), share.t0)
        self.rules, self.stopped = StopRules(), None
        self.finished.clear()
        self._count_tokens = _token_counter(job.tokenizer)
        self.monitor.start()
        pool = local_users if job.mode == "closed" else OPEN_LOOP_POOL
        self._client = HTTPClient.from_url(
            job.url,
            concurrency=max(1, pool),
            connection_timeout=job.timeout_s,
            network_timeout=job.timeout_s,
        )
        self._users_left = local_users
        self._pacer_claimed = False
        if job.mode == "closed":
            everything = _unbounded(job, share)
            if job.requests is None:
                self._planned = self._extra = everything
            else:
                self._planned = iter(share.closed_indices(job) or [])
                self._extra = (i for i in everything if i >= job.requests)
        self.go.set()

    def closed_user(self) -> ClosedUser:
        """The next of this worker's closed-loop users, numbered by its slot as the httpx
        engine numbers its workers (so both back off alike)."""
        assert self.job is not None and self.share is not None and self.window is not None
        assert self._planned is not None and self._extra is not None
        job, slots = self.job, self.share.slots
        slot = slots[self._users_claimed] if self._users_claimed < len(slots) else -1
        self._users_claimed += 1
        backoff = Backoff(job.max_retries, seed=f"{job.request_id_prefix}{slot}")
        return ClosedUser(self.window, self._planned, self._extra, backoff if job.backoff else None)

    def claim_pacer(self) -> bool:
        """True for the first user of an open-loop step: one pacer per worker, never two."""
        claimed, self._pacer_claimed = self._pacer_claimed, True
        return not claimed

    def wait_for_start(self) -> None:
        assert self.share is not None
        delay = self.share.t0 - self.clock.now()
        if delay > 0:
            gevent.sleep(delay)

    def user_finished(self) -> None:
        self._users_left -= 1
        if self._users_left <= 0:
            self.selfcheck = self.monitor.stop()
            self.finished.set()

    def run_request(
        self, index: int, retry: int = 0, intended: float | None = None
    ) -> RequestRecord:
        """Sends request `index` (its `retry`-th resend) and measures it; `deliver` hands the
        record on once its sender has marked it."""
        assert self.job is not None and self.share is not None and self._client is not None
        self.sent += 1
        record = send_request(
            self._client,
            self.job,
            index,
            self.clock,
            intended=intended,
            count_tokens=self._count_tokens,
            retry=retry,
        )
        record.worker = self.share.worker
        return record

    def deliver(self, record: RequestRecord) -> None:
        """The finished record to the sink and Locust's stats; a broken target stops the step."""
        self.sink.add(record)
        self.done += 1
        if record.retry == 0 and not record.extension:
            self.planned_done += 1
        if self.fire_event is not None:
            report_to_locust(self.fire_event, record)
        reason = self.rules.observe(record)
        if reason is not None and self.stopped is None:
            self.stopped = reason

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.go.clear()


def _token_counter(spec: str | None) -> TokenCounter | None:
    """The job's tokenizer, if this machine has it; else output tokens come from usage/chunks."""
    if spec is None:
        return None
    try:
        return token_counter(load_tokenizer(spec))
    except InputError:
        return None


def _unbounded(job: LocustJob, share: Share) -> Iterator[int]:
    """Closed loop until the duration ends: slot s runs requests s, s + users, s + 2·users..."""
    rnd = 0
    while True:
        for slot in share.slots:
            yield rnd * job.users + slot
        rnd += 1


def send_request(
    client: HTTPClient,
    job: LocustJob,
    index: int,
    clock: RunClock,
    *,
    intended: float | None = None,
    count_tokens: TokenCounter | None = None,
    retry: int = 0,
) -> RequestRecord:
    """Sends request `index` of the job (or its `retry`-th resend) and measures it; never
    raises for a failed request.

    Same fields, same error classes and same stream handling as `httpx.engine.send_one`: both
    build, fail and finish records through `capplan.loadtest.sse`.
    """
    record = new_record(
        request_id=job.request_id(index, retry),
        step=job.step,
        endpoint=job.endpoint,
        stream=job.stream,
        intended_start=intended,
        prompt_tokens=job.body_prompt_tokens(index),
    )
    payload = json.dumps(job.body(index)).encode()
    headers = {"Content-Type": "application/json", **job.headers}
    record.send = clock.now()
    response: HTTPSocketPoolResponse | None = None
    try:
        with gevent.Timeout(job.timeout_s, _DeadlineExceeded):
            response = client.request("POST", _request_uri(job.url), payload, headers)
            record.first_byte = clock.now()
            record.status = response.status_code
            if response.status_code != 200:
                apply_error_response(record, response.read(), response.get("retry-after"))
            elif job.stream:
                _read_stream(response, record, clock, count_tokens)
            else:
                apply_json_response(record, json.loads(response.read()), count_tokens)
    except _DeadlineExceeded:
        record_deadline(record, job.timeout_s)
    except TimeoutError as exc:
        record_failure(record, "timeout", exc)
    except ConnectionRefusedError as exc:
        record_failure(record, "connect_error", exc)
    except (OSError, HTTPException) as exc:  # reset, closed mid-answer, malformed HTTP
        record_failure(record, "read_error", exc)
    except (ValueError, UnicodeDecodeError) as exc:
        record_failure(record, "bad_response", exc)
    except Exception as exc:  # anything else still ends as a counted failure, never a lost user
        record_failure(record, "client_error", exc)
    finally:
        if response is not None:
            response.release()
    record.end = clock.now()
    return record


class _DeadlineExceeded(Exception):
    pass


def _read_stream(
    response: HTTPSocketPoolResponse,
    record: RequestRecord,
    clock: RunClock,
    count_tokens: TokenCounter | None,
) -> None:
    accumulator = StreamAccumulator()
    try:
        # readline returns as soon as one line is buffered: each SSE line gets its arrival time.
        while line := response.readline(b"\n"):
            if line.strip():
                accumulator.feed_line(line.decode("utf-8"), clock.now())
        tail = response.read()  # a last line without a newline, which readline does not return
        if tail.strip():
            accumulator.feed_line(tail.decode("utf-8"), clock.now())
    finally:
        accumulator.apply_to(record, count_tokens)
    mark_incomplete(accumulator, record)


def _request_uri(url: str) -> str:
    return str(URL(url).request_uri)


def report_to_locust(fire: Callable[..., None], record: RequestRecord) -> None:
    """Locust's stats and UI: E2E under the endpoint's name, TTFT as its own row."""
    name = f"/{record.endpoint}"
    exception: Exception | None = None
    if not record.ok:
        exception = RuntimeError(record.error or f"status {record.status}")
    fire(
        request_type="POST",
        name=name,
        response_time=(record.end - record.send) * 1000.0,
        response_length=record.output_tokens,
        exception=exception,
        context={},
    )
    if record.first_token is not None:
        fire(
            request_type="TTFT",
            name=name,
            response_time=(record.first_token - record.send) * 1000.0,
            response_length=0,
            exception=None,
            context={},
        )


def run_closed_user(state: WorkerState) -> None:
    """One closed-loop user: its next request as soon as one finishes, while the window lets it
    (`capplan.loadtest.closed_loop`, as the httpx engine's workers)."""
    try:
        state.wait_for_start()
        user = state.closed_user()
        while state.stopped is None and (send := user.next(state.clock.now())) is not None:
            record = state.run_request(send.index, send.retry)
            wait = user.answered(record, send, state.clock.now())
            state.deliver(record)
            if wait:
                gevent.sleep(wait)
    finally:
        state.user_finished()


def run_open_pacer(state: WorkerState) -> None:
    """The open loop: one greenlet per arrival, spawned at its intended start, then, while the
    window is extended, the extension's arrivals. Refused arrivals are never resent.

    Sends never wait for earlier answers, so a slow server delays nothing but its own
    responses; the generator's lag (send - intended) is in every record.
    """
    assert state.job is not None and state.share is not None and state.window is not None
    job, share, window = state.job, state.share, state.window
    in_flight: list[gevent.Greenlet[Any, Any]] = []

    def one(index: int, intended: float, warmup: bool, extension: bool) -> None:
        record = state.run_request(index, intended=intended)
        window.finished(warmup)
        record.warmup, record.extension = warmup, extension
        state.deliver(record)

    try:
        for index in share.open_indices(job):
            extension = index >= len(job.arrivals)
            if extension and window.done + window.in_flight >= window.plan.min_requests:
                break  # enough measured requests already: the sum never falls
            intended = share.t0 + job.arrival(index)
            delay = intended - state.clock.now()
            if delay > 0:
                gevent.sleep(delay)
            if state.stopped is not None or (extension and not window.extend(state.clock.now())):
                break
            warmup = window.is_warmup(index, intended)
            window.sent(warmup)
            in_flight.append(gevent.spawn(one, index, intended, warmup, extension))
            if len(in_flight) > 1024:
                in_flight = [g for g in in_flight if not g.dead]
        gevent.joinall(in_flight)
    finally:
        state.user_finished()


def make_user_class(state: WorkerState, name: str = "CapplanUser") -> type[User]:
    """A Locust user bound to `state`: it waits for the step to start, runs its part, stops."""

    def work(user: User) -> None:
        state.go.wait()
        assert state.job is not None
        if state.job.mode == "open":
            if state.claim_pacer():
                run_open_pacer(state)
        else:
            run_closed_user(state)
        raise StopUser()

    return type(
        name,
        (User,),
        {
            "tasks": [task(work)],
            "wait_time": constant(0),
            "host": "http://127.0.0.1",  # unused: requests go to the job's URL
            "__module__": __name__,
        },
    )


def hostname() -> str:
    return socket.gethostname()


def discover_model(base_url: str, headers: dict[str, str] | None = None) -> str | None:
    """The first model id the server lists at /v1/models (gevent twin of the httpx one)."""
    client = HTTPClient.from_url(base_url, connection_timeout=10.0, network_timeout=10.0)
    try:
        for path in MODELS_PATHS:
            try:
                response = client.get(path, headers=headers or {})
                model = first_model_id(response.status_code, json.loads(response.read()))
            except (OSError, HTTPException, ValueError, KeyError):
                continue
            if model is not None:
                return model
        return None
    finally:
        client.close()
