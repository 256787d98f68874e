"""What engines ask the target before they load it: is it there, and which model it serves.

Before the first step the target must answer: its model list with 200, or else one short
request (the run's first prompt, one output token) with a success. Otherwise the run does not
start, and `TargetError` says why in one line, in the server's own words when it sent some.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx

from capplan.errors import TargetError
from capplan.loadtest.prompts import PromptSpec
from capplan.loadtest.request import Target, auth_headers, request_body
from capplan.loadtest.server_message import server_message
from capplan.loadtest.sse import MODELS_PATHS, first_model_id

MODELS_TIMEOUT_S = 10.0


async def preflight(client: httpx.AsyncClient, target: Target, spec: PromptSpec) -> str | None:
    """The id of the model the target lists (None when it lists none); raises `TargetError`
    when neither its model list nor one probe request succeeds."""
    where = target.base_url
    for path in MODELS_PATHS:
        try:
            response = await client.get(path, timeout=MODELS_TIMEOUT_S)
        except httpx.ConnectError as exc:
            raise TargetError(f"nothing answers at {where}: {_exception(exc)}") from None
        except httpx.HTTPError:
            continue  # a timeout or a dropped connection: the probe request decides
        if response.status_code == 200:
            try:
                return first_model_id(200, response.json())
            except (ValueError, KeyError):
                return None  # it answers; what it serves is the request's business
    probe = replace(target, stream=False)
    body = request_body(probe, replace(spec, max_tokens=1))
    try:
        response = await client.post(target.path, json=body, timeout=target.timeout_s)
    except httpx.HTTPError as exc:
        raise TargetError(f"the probe request to {where} failed: {_exception(exc)}") from None
    if not 200 <= response.status_code < 300:
        raise TargetError(
            f"the probe request to {where}{target.path} got HTTP {response.status_code}: "
            f"{server_message(response.text)}"
        )
    return None


def preflight_at(target: Target, spec: PromptSpec) -> str | None:
    """`preflight` for a caller outside an event loop (the Locust engine's parent)."""

    async def check() -> str | None:
        async with httpx.AsyncClient(
            base_url=target.base_url,
            headers=auth_headers(target.api_key),
            timeout=httpx.Timeout(target.timeout_s, connect=min(10.0, target.timeout_s)),
        ) as client:
            return await preflight(client, target, spec)

    return asyncio.run(check())


def _exception(exc: BaseException) -> str:
    # httpx often raises with an empty message; the cause then says what happened.
    message = str(exc) or str(exc.__cause__ or exc.__context__ or "") or "no detail"
    return f"{type(exc).__name__}: {message}"
