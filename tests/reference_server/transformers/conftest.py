"""Fixtures for the transformers backend: real embedded tiny model, real engine thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reference_server.backend import Finished, GenerationRequest, TokenDelta
from reference_server.transformers_backend import TransformersBackend

BackendFactory = Callable[..., TransformersBackend]


@pytest.fixture
def make_backend() -> Iterator[BackendFactory]:
    """Started backends on the embedded model (cpu), closed at teardown."""
    made: list[TransformersBackend] = []

    def make(**options: Any) -> TransformersBackend:
        options.setdefault("device", "cpu")
        backend = TransformersBackend(**options)
        asyncio.run(backend.start())
        made.append(backend)
        return backend

    yield make
    for backend in made:
        asyncio.run(backend.close())


@pytest.fixture(scope="session")
def shared_backend() -> Iterator[TransformersBackend]:
    """One started embedded backend for tests that do not change it."""
    backend = TransformersBackend(device="cpu", batch_wait_ms=2.0)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


async def _collect(
    backend: TransformersBackend, request: GenerationRequest
) -> tuple[list[TokenDelta], Finished]:
    """All events of one generation: its deltas and its Finished."""
    deltas: list[TokenDelta] = []
    finished: Finished | None = None
    async for event in backend.generate(request):
        if isinstance(event, TokenDelta):
            deltas.append(event)
        else:
            finished = event
    assert finished is not None
    return deltas, finished


@pytest.fixture
def collect() -> Callable[..., Any]:
    """`await collect(backend, request)` -> (deltas, finished)."""
    return _collect


@pytest.fixture
def run_request() -> Callable[..., tuple[list[TokenDelta], Finished]]:
    """Run one generation to its end on a fresh event loop."""

    def run(
        backend: TransformersBackend, request: GenerationRequest
    ) -> tuple[list[TokenDelta], Finished]:
        return asyncio.run(_collect(backend, request))

    return run
