"""What engines ask the target before they load it: the id of the model it serves."""

from __future__ import annotations

import asyncio

import httpx

from capplan.loadtest.request import Target, auth_headers
from capplan.loadtest.sse import MODELS_PATHS, first_model_id


async def discover_model(client: httpx.AsyncClient) -> str | None:
    """The first model id the server lists at /v1/models, if it answers."""
    for path in MODELS_PATHS:
        try:
            response = await client.get(path, timeout=10.0)
            model = first_model_id(response.status_code, response.json())
        except (httpx.HTTPError, ValueError, KeyError):
            continue
        if model is not None:
            return model
    return None


def discover_model_at(target: Target) -> str | None:
    """`discover_model` for a caller outside an event loop (the Locust engine's parent)."""

    async def discover() -> str | None:
        async with httpx.AsyncClient(
            base_url=target.base_url, headers=auth_headers(target.api_key)
        ) as client:
            return await discover_model(client)

    return asyncio.run(discover())
