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
from capplan.loadtest.clock import RunClock
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
    retry_pause_s,
)

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
    _client: HTTPClient | None = None
    _queue: Iterator[int] | None = None
    _users_left: int = 0
    _pacer_claimed: bool = False
    _count_tokens: TokenCounter | None = None
    monitor: GeventLoopMonitor = field(default_factory=lambda: GeventLoopMonitor())

    def begin(self, job: LocustJob, share: Share, local_users: int) -> None:
        """Arms the step; users blocked on `go` start at t0."""
        self.job, self.share = job, share
        self.sent = self.done = 0
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
            indices = share.closed_indices(job)
            self._queue = iter(indices) if indices is not None else _unbounded(job, share)
        self.go.set()

    def next_closed_index(self) -> int | None:
        assert self.job is not None and self._queue is not None
        if self.job.duration_s is not None and self.clock.now() >= self._deadline():
            return None
        return next(self._queue, None)

    def _deadline(self) -> float:
        assert self.job is not None and self.share is not None
        return self.share.t0 + (self.job.duration_s or 0.0)

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

    def run_request(self, index: int, intended: float | None) -> RequestRecord:
        assert self.job is not None and self.share is not None and self._client is not None
        self.sent += 1
        record = send_request(
            self._client,
            self.job,
            index,
            self.clock,
            intended=intended,
            count_tokens=self._count_tokens,
        )
        record.worker = self.share.worker
        # Warmup by event time, as the httpx engine: intended start in open loop, send in closed.
        started = intended if intended is not None else record.send
        record.warmup = started < self.share.t0 + self.job.warmup_s
        self.sink.add(record)
        self.done += 1
        if self.fire_event is not None:
            report_to_locust(self.fire_event, record)
        return record

    def retry_pause_s(self, record: RequestRecord) -> float:
        """Closed loop with `honor_retry_after`: the wait before this user's next request."""
        assert self.job is not None
        if not self.job.honor_retry_after:
            return 0.0
        remaining = self._deadline() - self.clock.now() if self.job.duration_s is not None else None
        return retry_pause_s(record, remaining)

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
) -> RequestRecord:
    """Sends request `index` of the job and measures it; never raises for a failed request.

    Same fields, same error classes and same stream handling as `httpx.engine.send_one`: both
    build, fail and finish records through `capplan.loadtest.sse`.
    """
    record = new_record(
        request_id=job.request_id(index),
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
    """One closed-loop user: the next request of this worker's share as soon as one finishes."""
    try:
        state.wait_for_start()
        while (index := state.next_closed_index()) is not None:
            record = state.run_request(index, intended=None)
            pause = state.retry_pause_s(record)
            if pause > 0:
                gevent.sleep(pause)
    finally:
        state.user_finished()


def run_open_pacer(state: WorkerState) -> None:
    """The open loop: one greenlet per arrival, spawned at its intended start.

    Sends never wait for earlier answers, so a slow server delays nothing but its own
    responses; the generator's lag (send - intended) is in every record.
    """
    assert state.job is not None and state.share is not None
    job, share = state.job, state.share
    in_flight: list[gevent.Greenlet[Any, Any]] = []
    try:
        for index in share.open_indices(job):
            intended = share.t0 + job.arrivals[index]
            delay = intended - state.clock.now()
            if delay > 0:
                gevent.sleep(delay)
            in_flight.append(gevent.spawn(state.run_request, index, intended))
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
