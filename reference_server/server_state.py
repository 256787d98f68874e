"""What one app instance owns (gate, limiter, tokenizer lanes, connection guard, metrics,
backend), the admission checks cheapest first, and the drain. `reference_server.app` wires them
to routes; docs/server.md lists the checks in order with what each protects against.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from capplan.settings import ServerSettings
from reference_server.admission import AdmissionGate, OpenGate, Rejected
from reference_server.backend import Backend, GenerationRequest
from reference_server.connections import ConnectionGuard
from reference_server.generation import ApiError, GenerationRun
from reference_server.metrics import ServerMetrics, multiprocess_dir
from reference_server.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    first_error,
)
from reference_server.prompts import PromptTokenizer
from reference_server.rate_limit import RateLimiter, client_key
from reference_server.responses import Kind
from reference_server.vram import VramGuard, device_index

log = logging.getLogger("reference_server")
_COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# Answers after which the rest of the request is not worth reading: the connection closes.
_CLOSE_AFTER = frozenset({408, 413})


class ServerState:
    """Everything one app instance owns. Lives on `app.state.server`."""

    def __init__(
        self, config: ServerSettings, backend: Backend, cuda: Any, admission: bool = True
    ) -> None:
        self.config = config
        self.backend = backend
        self.metrics = ServerMetrics(backend.info.model_id)
        gate_type = AdmissionGate if admission else OpenGate
        self.gate = gate_type(
            config.max_concurrent,
            config.queue_size,
            config.queue_timeout_s,
            on_change=self.metrics.set_queue,
        )
        self.metrics.set_queue(0, 0)
        self.limiter = (
            RateLimiter(config.rate_limit, config.rate_limit_storage)
            if config.rate_limit and admission
            else None
        )
        self.cuda = cuda
        self.vram_guard: VramGuard | None = None
        if backend.info.device.startswith("cuda") and config.vram_guard is not None:
            if self.cuda is None:
                import torch

                self.cuda = torch.cuda
            self.vram_guard = VramGuard(
                self.cuda, config.vram_guard, device_index(backend.info.device)
            )
        self.ready = False
        self.draining = False
        self.start_error: str | None = None
        self.outcomes: dict[str, int] = {}
        self.rate_limit_storage_errors = 0  # requests let through while the store was down
        self.prompts = PromptTokenizer(backend, config.max_prompt_chars, lambda: self.max_context)
        self.connections = ConnectionGuard.from_settings(config, on_refused=self.count)
        self.runs: set[GenerationRun] = set()  # admitted and not closed yet
        self.drain_cut = 0  # requests the drain's deadline cut short

    @property
    def max_context(self) -> int:
        own = self.backend.info.max_context
        return min(own, self.config.max_context) if self.config.max_context else own

    def headers(self) -> dict[str, str]:
        info = self.backend.info
        out = {"x-capplan-backend": info.name, "x-capplan-device": info.device}
        if info.emulated:
            out["x-capplan-emulated"] = "true"
        return out

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome != "ok":
            self.metrics.reject(outcome)

    def error_response(
        self, err: ApiError, headers: dict[str, str], *, counted: bool = False
    ) -> JSONResponse:
        if not counted:  # a GenerationRun counts its own outcome when it closes
            self.count(err.reason)
        out = dict(headers)
        if err.retry_after_s is not None:
            out["retry-after"] = str(err.retry_after_s)
        if err.status == 401:
            out["www-authenticate"] = "Bearer"
        if err.status in _CLOSE_AFTER:
            out["connection"] = "close"
        body = error_body(err.message, type_=err.type_, code=err.status, param=err.param)
        return JSONResponse(body, status_code=err.status, headers=out)

    async def start_backend(self) -> None:
        try:
            await self.backend.start()
        except Exception as exc:  # /ready reports it; /health stays up so it can be read
            self.start_error = f"{type(exc).__name__}: {exc}"
            log.exception("backend failed to start")
            return
        self.gate.set_kv_pool(self.backend.info.kv_pool)
        self.ready = True

    def stats(self) -> dict[str, Any]:
        info = self.backend.info
        memory = self.backend.memory_stats()
        self.metrics.set_memory(memory)
        c = self.config
        return {
            "backend": {
                "name": info.name,
                "model_id": info.model_id,
                "device": info.device,
                "max_context": info.max_context,
                "emulated": info.emulated,
                "details": info.details,
            },
            "emulated": info.emulated,
            "process": self._process(),
            "ready": self.ready,
            "draining": self.draining,
            "running": self.gate.running,
            "queued": self.gate.queued,
            "limits": {
                "max_concurrent": c.max_concurrent,
                "queue_size": c.queue_size,
                "queue_timeout_s": c.queue_timeout_s,
                "request_timeout_s": c.request_timeout_s,
                "max_tokens_cap": c.max_tokens_cap,
                "max_context": self.max_context,
                "strict": c.strict,
                "max_body_bytes": c.max_body_bytes,
                "max_prompt_chars": self.prompts.limit(),
                "header_timeout_s": c.header_timeout_s,
                "body_timeout_s": c.body_timeout_s,
                "max_connections": self.connections.max_connections,
                "forwarded_allow_ips": c.forwarded_allow_ips,
                "rate_limit": c.rate_limit,
                "rate_limit_storage": c.rate_limit_storage if c.rate_limit else None,
                "vram_guard": c.vram_guard if self.vram_guard else None,
                "api_key_required": c.api_key is not None,
            },
            "tokenizing": self.prompts.in_progress,
            "connections": {
                "open": self.connections.open,
                "max": self.connections.max_connections,
            },
            "counters": dict(self.outcomes),
            "rate_limit_storage_errors": self.rate_limit_storage_errors,
            "retry_after_s": self.gate.retry_after_s(),
            "memory": memory,
            "kv_cache": self._kv_cache(memory),
        }

    def _kv_cache(self, memory: dict[str, Any]) -> dict[str, Any] | None:
        """The KV pool as admission sees it (blocks reserved for admitted requests) and as the
        backend does (blocks held by running ones); None without a fixed pool."""
        pool = self.gate.kv_pool
        if pool is None:
            return None
        held = memory.get("kv_cache") or {}
        return {
            "block_size": pool.block_size,
            "num_blocks": pool.num_blocks,
            "tokens": pool.tokens,
            "reserved_blocks": self.gate.kv_blocks_reserved,
            "used_blocks": held.get("used_blocks"),
            "usage": held.get("usage"),
            "pool_bytes": held.get("pool_bytes"),
        }

    def _process(self) -> dict[str, Any]:
        """Which process answered: under gunicorn every figure in /stats is this worker's."""
        c = self.config
        # `gunicorn -c FILE` (from `capplan estimate --emit gunicorn`) sets CAPPLAN_WORKERS only.
        workers = c.workers if c.server == "gunicorn" or c.workers > 1 else 1
        scope = "the server"
        if workers > 1:
            scope = "this worker only; /metrics " + (
                "sums all workers" if multiprocess_dir() else "too (PROMETHEUS_MULTIPROC_DIR unset)"
            )
        return {"pid": os.getpid(), "server": c.server, "workers": workers, "stats_scope": scope}

    # --- the checks, cheapest first (docs/server.md) ----------------------------------------

    def check_declared_size(self, request: Request) -> None:
        """413 from the Content-Length header alone, before anything is read."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise self._too_large()

    def _too_large(self) -> ApiError:
        limit = self.config.max_body_bytes
        return ApiError(413, f"request body over {limit} bytes", reason="too_large", param="body")

    def check_auth(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {self.config.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(
                401, "missing or wrong API key (Authorization: Bearer <key>)",
                reason="unauthorized", type_="authentication_error",
            )  # fmt: skip

    async def read_body(self, request: Request) -> bytes:
        """The body, at most --max-body-bytes (413), within --body-timeout (408)."""
        limit, timeout_s = self.config.max_body_bytes, self.config.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        try:
            with anyio.fail_after(timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large()
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(
                408, f"request body not received within {timeout_s:g} s ({size} bytes came)",
                reason="body_timeout", type_="timeout", param="body",
            ) from None  # fmt: skip
        return b"".join(chunks)

    def parse(self, body: bytes, kind: Kind) -> CompletionRequest | ChatCompletionRequest:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
            raise ApiError(
                400, f"body is not valid JSON: {exc}", reason="invalid", param="body"
            ) from None
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object", reason="invalid", param="body")
        model = CompletionRequest if kind == "completion" else ChatCompletionRequest
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            field, message = first_error(exc)
            raise ApiError(422, f"{field}: {message}", reason="invalid", param=field) from None

    def check_ready(self) -> None:
        if not self.ready:
            raise ApiError(
                503, self.start_error or "model is loading", reason="not_ready",
                type_="server_overloaded", retry_after_s=2,
            )  # fmt: skip

    def max_tokens(
        self, parsed: CompletionRequest | ChatCompletionRequest, prompt_tokens: int
    ) -> tuple[int, dict[str, str]]:
        """Effective max_tokens and the headers that report a clamp."""
        cap, context = self.config.max_tokens_cap, self.max_context
        pool = self.backend.info.kv_pool
        if pool is not None and pool.tokens < context:
            context = pool.tokens  # a request must fit the KV cache as well as the context
        if prompt_tokens == 0:
            raise ApiError(400, "prompt is empty", reason="invalid", param="prompt")
        requested = parsed.requested_max_tokens()
        if requested is None:
            if isinstance(parsed, CompletionRequest):
                requested = min(_COMPLETIONS_DEFAULT_MAX_TOKENS, cap)
            else:
                requested = min(cap, context - prompt_tokens)
        if requested < 1:
            raise ApiError(
                400, f"prompt ({prompt_tokens} tokens) leaves no room in the {context}-token "
                "context", reason="invalid", param="messages",
            )  # fmt: skip
        headers: dict[str, str] = {}
        if requested > cap:
            if self.config.strict:
                raise ApiError(
                    422, f"max_tokens {requested} is above the server's cap of {cap}",
                    reason="invalid", param="max_tokens",
                )  # fmt: skip
            headers["x-capplan-max-tokens-clamped"] = f"{requested}->{cap}"
            requested = cap
        if pool is not None and prompt_tokens + requested > pool.tokens:
            raise ApiError(
                400, f"prompt ({prompt_tokens} tokens) + max_tokens ({requested}) is more than "
                f"the server's KV cache holds ({pool.tokens} tokens), so it could never run; "
                "shorten the prompt or lower max_tokens", reason="kv_too_large",
                param="max_tokens",
            )  # fmt: skip
        if prompt_tokens + requested > context:
            raise ApiError(
                400, f"prompt ({prompt_tokens} tokens) + max_tokens ({requested}) is over the "
                f"model's context of {context} tokens; shorten the prompt or lower max_tokens",
                reason="invalid", param="max_tokens",
            )  # fmt: skip
        return requested, headers

    async def check_rate(self, request: Request) -> None:
        if self.limiter is None:
            return
        # check_auth ran first: with --api-key set, the request carries that key.
        key = client_key(self.config.api_key, request.client.host if request.client else None)
        try:
            decision = await self.limiter.hit(key)
        except Exception as exc:
            # The counters' store (redis) is down: serve without the rate limit rather than
            # fail every request; the gate and queue still protect the backend.
            self.rate_limit_storage_errors += 1
            log.warning("rate limit storage unavailable, request let through: %s", exc)
            return
        if not decision.allowed:
            raise ApiError(
                429, f"rate limit {decision.limit} exceeded", reason="rate_limited",
                type_="rate_limit_exceeded", retry_after_s=decision.retry_after_s,
            )  # fmt: skip

    async def admit(self, gen: GenerationRequest, arrival: float) -> GenerationRun:
        """Take a slot, pass the VRAM guard, start generating and wait for the first event."""
        kv_tokens = len(gen.prompt_ids) + gen.max_tokens
        try:
            queue_s = await self.gate.acquire(kv_tokens)
        except asyncio.CancelledError:
            self.count("client_disconnect")  # gone while queued; no run to count it
            raise
        except Rejected as exc:
            self.count(exc.reason)
            raise ApiError(
                503, str(exc), reason=exc.reason, type_="server_overloaded",
                retry_after_s=exc.retry_after_s,
            ) from None  # fmt: skip
        self.metrics.queue_time.labels(self.metrics.model_name).observe(queue_s)
        run = GenerationRun(
            events=self.backend.generate(gen).__aiter__(),
            gate=self.gate,
            metrics=self.metrics,
            cuda=self.cuda,
            arrival=arrival,
            admitted=time.monotonic(),
            timeout_s=self.config.request_timeout_s,
            outcomes=self.outcomes,
            live=self.runs,
            kv_tokens=kv_tokens,
        )
        try:
            if self.vram_guard is not None:
                over, used = self.vram_guard.over()
                if over:
                    raise ApiError(
                        503, f"GPU memory at {used:.0%}, above the guard of "
                        f"{self.vram_guard.fraction:.0%}", reason="vram_guard",
                        type_="server_overloaded", retry_after_s=self.gate.retry_after_s(),
                    )  # fmt: skip
            self.metrics.prompt_tokens.labels(self.metrics.model_name).inc(len(gen.prompt_ids))
            await run.prime()
        except ApiError as err:
            await run.close(err.reason)
            raise
        except Exception:
            await run.close("error")
            raise
        except BaseException:  # cancelled: the client went away
            await run.close("client_disconnect")
            raise
        return run

    # --- the drain ----------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """SIGTERM: /ready answers 503 now; what is still in flight at --drain-timeout is cut."""
        self.draining = True
        asyncio.get_running_loop().call_later(self.config.drain_timeout_s, self.cut_in_flight)

    def cut_in_flight(self) -> None:
        """The drain's deadline: every running request ends with a 503 (an SSE error event when
        it streams), every queued one is refused, and the gate admits no one more."""
        self.gate.draining = True
        message = (
            f"server shutting down: the drain did not finish within "
            f"{self.config.drain_timeout_s:g} s (--drain-timeout)"
        )
        runs = list(self.runs)
        for run in runs:
            run.cut(ApiError(503, message, reason="drain_timeout", type_="server_overloaded"))
        self.drain_cut += len(runs) + self.gate.refuse_waiters(message)
        if self.drain_cut:
            log.error("drain incomplete: %d request(s) cut at --drain-timeout", self.drain_cut)

    def close(self) -> None:
        self.prompts.close()
