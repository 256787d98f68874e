"""The async httpx engine: one coroutine per request, timestamps at the socket.

No pool ever queues a request behind the concurrency the user asked for (a silent client-side
queue would be measured as server latency): every concurrent request gets its own keep-alive
client, created on demand (`ClientPool`). One shared httpx pool would not cap concurrency when
sized without limits, but httpcore scans all its connections on every request, which is
quadratic in concurrency and made the client, not the server, the bottleneck past a few dozen
streams. Chunks are split into SSE lines by hand so that every line from one network read
carries that read's arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from capplan.loadtest.backoff import MAX_RETRIES, Backoff
from capplan.loadtest.clock import RunClock
from capplan.loadtest.closed_loop import ClosedUser
from capplan.loadtest.prompts import PromptSpec
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.request import Target, auth_headers, request_body, request_id
from capplan.loadtest.sse import (
    StreamAccumulator,
    TokenCounter,
    apply_error_response,
    apply_json_response,
    mark_incomplete,
    new_record,
    record_deadline,
    record_failure,
)
from capplan.loadtest.window import StepWindow, WindowPlan


def make_client(target: Target, *, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """A client whose pool never limits concurrency (no cap, no pool wait)."""
    return httpx.AsyncClient(
        base_url=target.base_url,
        headers=auth_headers(target.api_key),
        verify=verify,
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=None, keepalive_expiry=30.0
        ),
        timeout=httpx.Timeout(target.timeout_s, connect=min(10.0, target.timeout_s), pool=None),
    )


class ClientPool:
    """One single-connection client per concurrent request, made on demand, reused after.

    Concurrency is never capped: when every client is busy a new one is made.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self._ssl = httpx.create_ssl_context()  # one context: building one costs milliseconds
        self._free: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []

    def acquire(self) -> httpx.AsyncClient:
        if self._free:
            return self._free.pop()
        client = make_client(self.target, verify=self._ssl)
        self._all.append(client)
        return client

    def release(self, client: httpx.AsyncClient) -> None:
        self._free.append(client)

    @property
    def size(self) -> int:
        return len(self._all)

    async def aclose(self) -> None:
        for client in self._all:
            await client.aclose()
        self._all.clear()
        self._free.clear()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def send_one(
    client: httpx.AsyncClient,
    target: Target,
    spec: PromptSpec,
    *,
    clock: RunClock,
    request_id: str,
    step: str = "",
    intended_start: float | None = None,
    count_tokens: TokenCounter | None = None,
) -> RequestRecord:
    """Sends one request and returns its finished record; never raises for HTTP failures."""
    record = new_record(
        request_id=request_id,
        step=step,
        endpoint=target.endpoint,
        stream=target.stream,
        intended_start=intended_start,
        prompt_tokens=spec.prompt_tokens,
    )
    request = client.build_request("POST", target.path, json=request_body(target, spec))
    record.send = clock.now()
    try:
        response = await client.send(request, stream=True)
        try:
            record.first_byte = clock.now()
            record.status = response.status_code
            if response.status_code != 200:
                body = await response.aread()
                apply_error_response(record, body, response.headers.get("retry-after"))
            elif target.stream:
                await _read_stream(response, record, clock, target.timeout_s, count_tokens)
            else:
                body = json.loads(await response.aread())
                apply_json_response(record, body, count_tokens)
        finally:
            await response.aclose()
    except httpx.TimeoutException as exc:
        record_failure(record, "timeout", exc)
    except httpx.ConnectError as exc:
        record_failure(record, "connect_error", exc)
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        record_failure(record, "read_error", exc)
    except httpx.HTTPError as exc:
        record_failure(record, "http_error", exc)
    except (ValueError, UnicodeDecodeError) as exc:
        record_failure(record, "bad_response", exc)
    except _DeadlineExceeded:
        record_deadline(record, target.timeout_s)
    except Exception as exc:  # anything else still ends as a counted failure, never a lost run
        record_failure(record, "client_error", exc)
    record.end = clock.now()
    return record


class _DeadlineExceeded(Exception):
    pass


async def _read_stream(
    response: httpx.Response,
    record: RequestRecord,
    clock: RunClock,
    timeout_s: float,
    count_tokens: TokenCounter | None,
) -> None:
    acc = StreamAccumulator()
    deadline = record.send + timeout_s
    buffer = b""
    try:
        async for data in response.aiter_bytes():
            t = clock.now()
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line:
                    acc.feed_line(line.decode("utf-8"), t)
            if t > deadline:
                raise _DeadlineExceeded
        if buffer.strip():
            acc.feed_line(buffer.decode("utf-8"), clock.now())
    finally:
        acc.apply_to(record, count_tokens)
    mark_incomplete(acc, record)


OnRecord = Callable[[RequestRecord], None]


@dataclass
class StepPlan:
    """One step for the engine: prompts by index, how many, and its window (how long, warmup,
    extension)."""

    step: str
    specs: Sequence[PromptSpec]  # cycled when the step sends more requests than specs
    requests: int | None
    window: WindowPlan
    id_prefix: str


class StopFlag:
    """Set from a signal handler or the runner: no new requests start after it is set."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()


async def _send_planned(
    client: httpx.AsyncClient,
    target: Target,
    plan: StepPlan,
    index: int,
    *,
    clock: RunClock,
    count_tokens: TokenCounter | None,
    intended_start: float | None = None,
    retry: int = 0,
) -> RequestRecord:
    """Request `index` of the step (or its `retry`-th resend): its prompt (specs cycle), its id."""
    return await send_one(
        client,
        target,
        plan.specs[index % len(plan.specs)],
        clock=clock,
        request_id=request_id(plan.id_prefix, index, retry),
        step=plan.step,
        intended_start=intended_start,
        count_tokens=count_tokens,
    )


async def _pause(seconds: float, stop: StopFlag) -> None:
    """Sleeps `seconds`, or less when the run is stopped meanwhile."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.event.wait(), seconds)


async def run_closed_step(
    clients: ClientPool,
    target: Target,
    plan: StepPlan,
    concurrency: int,
    *,
    clock: RunClock,
    on_record: OnRecord,
    stop: StopFlag,
    on_send: Callable[[], None] | None = None,
    count_tokens: TokenCounter | None = None,
    stagger_s: float = 0.0,
    backoff: bool = True,
    max_retries: int = MAX_RETRIES,
) -> None:
    """N workers; each sends its next request when its previous one ends, until the step's
    window closes (`capplan.loadtest.window`: duration or requests, then the extension).

    `stagger_s` spreads the workers' first requests evenly over that many seconds, so that
    equal requests do not stay in lockstep (every round a burst) for the whole step.
    `backoff`: after a 429 or 503 a worker waits (`capplan.loadtest.backoff`) and resends.
    """
    window = StepWindow(plan.window, clock.now())
    planned: Iterator[int]
    extra: Iterator[int]
    if plan.requests is not None:
        planned, extra = iter(range(plan.requests)), itertools.count(plan.requests)
    else:
        planned = extra = itertools.count()

    async def worker(number: int) -> None:
        if stagger_s > 0:
            await asyncio.sleep(stagger_s * number / concurrency)
        client = clients.acquire()  # each worker keeps its own connection
        try:
            await loop_requests(client, number)
        finally:
            clients.release(client)

    async def loop_requests(client: httpx.AsyncClient, number: int) -> None:
        refusals = Backoff(max_retries, seed=f"{plan.id_prefix}{number}") if backoff else None
        user = ClosedUser(window, planned, extra, refusals)
        while not stop.is_set and (send := user.next(clock.now())) is not None:
            if on_send is not None:
                on_send()
            record = await _send_planned(
                client, target, plan, send.index, clock=clock, count_tokens=count_tokens,
                retry=send.retry,
            )  # fmt: skip
            wait = user.answered(record, send, clock.now())
            on_record(record)
            if wait:
                await _pause(wait, stop)

    await _gather_until_stopped([worker(n) for n in range(concurrency)], stop)


async def run_open_step(
    clients: ClientPool,
    target: Target,
    plan: StepPlan,
    offsets: Sequence[float],
    *,
    clock: RunClock,
    on_record: OnRecord,
    stop: StopFlag,
    on_send: Callable[[], None] | None = None,
    count_tokens: TokenCounter | None = None,
    extension_offsets: Sequence[float] = (),
) -> None:
    """Sends request i at `offsets[i]` whatever is still in flight (open loop); then, while the
    step's window is extended, the `extension_offsets`. Refused requests are never resent."""
    loop = asyncio.get_running_loop()
    start = clock.now() + 0.01
    window = StepWindow(plan.window, start)
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, intended: float, warmup: bool, extension: bool) -> None:
        client = clients.acquire()
        try:
            record = await _send_planned(
                client,
                target,
                plan,
                index,
                clock=clock,
                count_tokens=count_tokens,
                intended_start=intended,
            )
        finally:
            clients.release(client)
        window.finished(warmup)
        record.warmup, record.extension = warmup, extension
        on_record(record)

    async def generate() -> None:
        for index, offset in enumerate(itertools.chain(offsets, extension_offsets)):
            extension = index >= len(offsets)
            if extension and window.done + window.in_flight >= plan.window.min_requests:
                return  # enough measured requests already: the sum never falls
            intended = start + offset
            delay = intended - clock.now()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set or (extension and not window.extend(clock.now())):
                return
            warmup = window.is_warmup(index, intended)
            window.sent(warmup)
            if on_send is not None:
                on_send()
            task = loop.create_task(one(index, intended, warmup, extension))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    await _gather_until_stopped([generate()], stop)
    if tasks:
        await _gather_until_stopped(list(tasks), stop)


async def _gather_until_stopped(aws: Sequence[Awaitable[None]], stop: StopFlag) -> None:
    """Awaits all; a stop cancels them (in-flight requests are then not recorded)."""
    gathered: asyncio.Future[Any] = asyncio.gather(*aws)
    stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.event.wait())
    try:
        done, _ = await asyncio.wait({gathered, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if gathered not in done:
            gathered.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gathered
        else:
            gathered.result()
    finally:
        stopper.cancel()
