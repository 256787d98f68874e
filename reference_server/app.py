"""The FastAPI app: OpenAI-compatible endpoints behind admission control.

Checks run cheapest first (reference_server/server_state.py, docs/server.md): declared body size
(413), API key (401), body read within its size and time (413, 408), JSON and schema (400/422),
readiness (503), rate limit (429), prompt length (400) and tokenization off the event loop,
max_tokens cap and context (422/400), concurrency gate and queue (503 + Retry-After), VRAM guard
(503), then generation under the request timeout (504), which bounds a streamed answer's writes
too. A streamed answer sends its headers with the first token, so every failure before it still
gets its own status code; any other exception is a counted JSON 500 that keeps the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from capplan.settings import ServerSettings
from reference_server.backend import Backend, GenerationRequest, TokenDelta
from reference_server.connections import ABORT_EXTENSION
from reference_server.generation import ApiError, GenerationRun
from reference_server.openai_schema import ChatCompletionRequest, CompletionRequest, error_body
from reference_server.responses import SSE_DONE, AnswerShape, Kind, sse
from reference_server.server_state import ServerState

log = logging.getLogger("reference_server")
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer began."""


class _RunStreamingResponse(StreamingResponse):
    """Closes its run however the response ends: if the client leaves before the body iterator
    ever starts, the iterator's own `finally` never runs and the slot would leak. Its writes are
    bounded by the run's deadline (plus a grace to write the last events): a client that stops
    reading would otherwise hold the slot for as long as it keeps the connection open."""

    def __init__(self, run: GenerationRun, content: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stalled = False
        try:
            with anyio.CancelScope(deadline=self._run.write_deadline()) as writing:
                self._run.write_scope = writing
                await super().__call__(scope, receive, send)
            stalled = writing.cancelled_caught
        finally:
            self._run.write_scope = None
            with anyio.CancelScope(shield=True):  # no-op when already closed
                await self._run.close("stalled_client" if stalled else "client_disconnect")
        if stalled:  # the answer cannot be finished: drop the connection it is stuck on
            log.warning("client stopped reading its stream; connection aborted, slot freed")
            abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
            if callable(abort):
                abort()


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it and raise ClientGone."""

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    work_task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work_task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work_task.done():
            work_task.cancel()
    if not work_task.done() or work_task.cancelled():
        with suppress(asyncio.CancelledError):
            await work_task
        raise ClientGone
    return work_task.result()


async def _serve(state: ServerState, request: Request, kind: Kind) -> Response:
    arrival = time.monotonic()
    headers = state.headers()
    try:
        parsed, prompt_ids, max_tokens = await _check(state, request, kind, headers)
    except ApiError as err:
        return state.error_response(err, headers)
    except ClientDisconnect:  # gone while its body was being read
        state.count("client_disconnect")
        return Response(status_code=499)
    except Exception:
        return _internal_error(state, headers)

    prefix = "cmpl-" if kind == "completion" else "chatcmpl-"
    request_id = prefix + uuid.uuid4().hex[:24]
    headers["x-request-id"] = request_id
    gen = GenerationRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        seed=parsed.seed,
        stop=parsed.stop_tuple(),
        request_id=request_id,
    )
    shape = AnswerShape.new(kind, request_id, state.backend.info.model_id)
    try:
        run = await _until_disconnect(request, state.admit(gen, arrival))
    except ApiError as err:  # counted by the gate, or by the run's close()
        return state.error_response(err, headers, counted=True)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; uvicorn drops it
    except Exception:  # admit() closed the run as an error
        return _internal_error(state, headers, counted=True)
    if parsed.stream:
        return _RunStreamingResponse(
            run,
            _stream(run, shape, parsed.include_usage()),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    try:
        text = await _until_disconnect(request, _collect(run))
    except ApiError as err:
        await run.close(err.reason)
        return state.error_response(err, headers, counted=True)
    except ClientGone:
        await run.close("client_disconnect")
        return Response(status_code=499)
    except Exception:
        await run.close("error")
        return _internal_error(state, headers, counted=True)
    except BaseException:
        await run.close("error")
        raise
    await run.close("ok")
    assert run.finished is not None
    body = shape.full(
        text, run.finished.finish_reason, run.finished.prompt_tokens, run.finished.completion_tokens
    )
    return JSONResponse(body, headers=headers)


async def _check(
    state: ServerState, request: Request, kind: Kind, headers: dict[str, str]
) -> tuple[CompletionRequest | ChatCompletionRequest, list[int], int]:
    """Every check before the gate, cheapest first; raises ApiError on the first that fails."""
    state.check_declared_size(request)
    state.check_auth(request)
    parsed = state.parse(await state.read_body(request), kind)
    state.check_ready()
    await state.check_rate(request)
    prompt_ids = await state.prompts.tokenize(parsed)
    max_tokens, clamp_headers = state.max_tokens(parsed, len(prompt_ids))
    headers.update(clamp_headers)
    return parsed, prompt_ids, max_tokens


def _internal_error(
    state: ServerState, headers: dict[str, str], *, counted: bool = False
) -> JSONResponse:
    """A bug, not the client's fault: logged with its traceback, answered as a JSON 500 that
    /stats and /metrics count as `error`, and the connection stays usable."""
    log.exception("unexpected error")
    err = ApiError(500, "internal error", reason="error", type_="server_error")
    return state.error_response(err, headers, counted=counted)


async def _collect(run: GenerationRun) -> str:
    parts = [run.first_text]
    while (event := await run.next_event()) is not None:
        if isinstance(event, TokenDelta):
            parts.append(event.text)
    return "".join(parts)


async def _stream(
    run: GenerationRun, shape: AnswerShape, include_usage: bool
) -> AsyncIterator[bytes]:
    outcome = "client_disconnect"  # unless we get to the end
    try:
        if shape.kind == "chat":
            yield sse(shape.chunk(None))
        if run.first_text:
            yield sse(shape.chunk(run.first_text))
        while True:
            try:
                event = await run.next_event()
            except ApiError as err:  # timeout, out of memory, or the drain's deadline
                outcome = err.reason
                yield sse(error_body(err.message, type_=err.type_, code=err.status))
                yield SSE_DONE
                return
            if event is None:
                break
            if isinstance(event, TokenDelta) and event.text:
                yield sse(shape.chunk(event.text))
        finished = run.finished
        assert finished is not None
        yield sse(shape.chunk("", finish_reason=finished.finish_reason))
        if include_usage:
            yield sse(shape.usage_chunk(finished.prompt_tokens, finished.completion_tokens))
        yield SSE_DONE
        outcome = "ok"
    except Exception:  # headers are out: the error goes in the stream, the connection stays
        log.exception("unexpected error in a stream")
        outcome = "error"
        yield sse(error_body("internal error", type_="server_error", code=500))
        yield SSE_DONE
    finally:
        await run.close(outcome)


def create_app(
    config: ServerSettings, backend: Backend, *, cuda: Any = None, admission: bool = True
) -> FastAPI:
    """The server for `backend` under `config`. `cuda`: a torch.cuda-like object for the VRAM
    guard (default: torch.cuda, imported only when the backend runs on cuda). `admission=False`
    drops the gate, queue and rate limit: only for measuring what they cost
    (benchmarks/server_gate_overhead.py)."""
    state = ServerState(config, backend, cuda, admission)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starter = asyncio.create_task(state.start_backend())
        try:
            yield
        finally:
            state.draining = True
            state.gate.draining = True
            if not starter.done():
                starter.cancel()
            state.close()
            await backend.close()

    app = FastAPI(
        title="capplan reference server",
        description="OpenAI-compatible inference with admission control.",
        lifespan=lifespan,
    )
    app.state.server = state

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Routes other than the two POSTs (those answer their own errors, in _serve).
        log.exception("unexpected error", exc_info=exc)
        state.count("error")
        body = error_body("internal error", type_="server_error", code=500)
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(Exception, unexpected)
    _add_routes(app, state)
    return app


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody for `model`, with pydantic's `$defs` inlined: a `#/$defs/...`
    reference inside an operation resolves nowhere, so /docs and schema fuzzers would skip it."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    content = {"application/json": {"schema": inline(schema)}}
    return {"requestBody": {"content": content, "required": True}}


def _add_routes(app: FastAPI, state: ServerState) -> None:
    completion_schema = _body_schema(CompletionRequest)
    chat_schema = _body_schema(ChatCompletionRequest)

    @app.post("/v1/completions", openapi_extra=completion_schema)
    async def completions(request: Request) -> Response:
        return await _serve(state, request, "completion")

    @app.post("/v1/chat/completions", openapi_extra=chat_schema)
    async def chat_completions(request: Request) -> Response:
        return await _serve(state, request, "chat")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        try:
            state.check_auth(request)
        except ApiError as err:
            return state.error_response(err, state.headers())
        info = state.backend.info
        card = {
            "id": info.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "capplan",
            "max_model_len": state.max_context,
        }
        return JSONResponse({"object": "list", "data": [card]}, headers=state.headers())

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready"})
        status = "draining" if state.draining else ("failed" if state.start_error else "loading")
        return JSONResponse(
            {"status": status, "error": state.start_error},
            status_code=503,
            headers={"retry-after": "2"},
        )

    @app.get("/stats")
    async def stats() -> JSONResponse:
        return JSONResponse(state.stats(), headers=state.headers())

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.set_memory(state.backend.memory_stats())
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
