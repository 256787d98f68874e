"""VRAM guard on cuda (fake torch.cuda at the hardware boundary) and out-of-memory -> 503."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import torch

from reference_server.backend import GenerationEvent, GenerationRequest
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from tests.reference_server.conftest import ServerFactory, completion

GIB = 1024**3


@dataclass
class _Props:
    total_memory: int


class FakeCuda:
    """The torch.cuda functions the server calls, with memory use set by the test."""

    def __init__(self, allocated: int, total: int) -> None:
        self.allocated = allocated
        self.total = total
        self.empty_cache_calls = 0

    def memory_allocated(self, device: int = 0) -> int:
        return self.allocated

    def get_device_properties(self, device: int = 0) -> _Props:
        return _Props(self.total)

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1


class FakeCudaWithDriverInfo(FakeCuda):
    """Adds what the driver sees: torch's reserved pool and the device's free memory."""

    def __init__(self, allocated: int, reserved: int, free: int, total: int) -> None:
        super().__init__(allocated, total)
        self.reserved = reserved
        self.free = free

    def memory_reserved(self, device: int = 0) -> int:
        return self.reserved

    def mem_get_info(self, device: int = 0) -> tuple[int, int]:
        return self.free, self.total


def test_vram_guard_counts_memory_torch_cannot_have(emulated_server: ServerFactory) -> None:
    # 8 GiB of tensors in a 8.5 GiB pool; 1 GiB free on the card: the other 0.5 GiB is the CUDA
    # context and workspaces. In use: 8.5 of 10 GiB, over a 0.84 guard (allocated alone: 0.80).
    cuda = FakeCudaWithDriverInfo(
        allocated=8 * GIB, reserved=int(8.5 * GIB), free=1 * GIB, total=10 * GIB
    )
    server = emulated_server(backend=_cuda_backend(), cuda=cuda, vram_guard=0.84)
    refused = httpx.post(server.url + "/v1/completions", json=completion(), timeout=10)
    assert refused.status_code == 503
    assert "85%" in refused.json()["error"]["message"]
    # The pool's cached free blocks are reusable, so they do not count against the guard.
    cuda.allocated, cuda.free = 4 * GIB, 1 * GIB
    assert httpx.post(server.url + "/v1/completions", json=completion(), timeout=10).is_success


def _cuda_backend() -> EmulatedBackend:
    backend = EmulatedBackend(EmulatedTiming(ttft_ms=0, tpot_ms=0))
    backend.info.device = "cuda:0"
    return backend


def test_vram_guard_refuses_above_the_fraction(emulated_server: ServerFactory) -> None:
    cuda = FakeCuda(allocated=int(9.6 * GIB), total=10 * GIB)
    server = emulated_server(backend=_cuda_backend(), cuda=cuda, vram_guard=0.9)
    refused = httpx.post(server.url + "/v1/completions", json=completion(), timeout=10)
    assert refused.status_code == 503
    assert "memory" in refused.json()["error"]["message"]
    assert "retry-after" in refused.headers
    assert server.stats()["running"] == 0
    cuda.allocated = 5 * GIB
    assert httpx.post(server.url + "/v1/completions", json=completion(), timeout=10).is_success


class _OomOnceBackend(EmulatedBackend):
    """Raises torch's CUDA OOM on its first generation, then works."""

    def __init__(self) -> None:
        super().__init__(EmulatedTiming(ttft_ms=0, tpot_ms=0))
        self.info.device = "cuda:0"
        self.failures_left = 1

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self.failures_left:
            self.failures_left -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        async for event in super().generate(request):
            yield event


def test_cuda_out_of_memory_is_503_and_the_worker_lives_on(
    emulated_server: ServerFactory,
) -> None:
    cuda = FakeCuda(allocated=1 * GIB, total=10 * GIB)
    server = emulated_server(backend=_OomOnceBackend(), cuda=cuda)
    failed = httpx.post(server.url + "/v1/completions", json=completion(), timeout=10)
    assert failed.status_code == 503
    assert "out of memory" in failed.json()["error"]["message"]
    assert cuda.empty_cache_calls == 1  # the cache was freed
    assert server.stats()["running"] == 0
    again = httpx.post(server.url + "/v1/completions", json=completion(), timeout=10)
    assert again.status_code == 200


def test_emulated_kv_budget_overflow_is_503(emulated_server: ServerFactory) -> None:
    # 1000 bytes per token, budget for 100 tokens: one 60-token request fits, two do not.
    server = emulated_server(
        tpot_ms=0, kv_bytes_per_token=1000, kv_budget_bytes=100_000, max_concurrent=4
    )
    server.backend.hold()
    first = threading.Thread(
        target=httpx.post,
        args=(server.url + "/v1/completions",),
        kwargs={"json": completion(58), "timeout": 10},
    )
    first.start()
    server.wait_stats(lambda s: s["running"] == 1)
    second = httpx.post(server.url + "/v1/completions", json=completion(58), timeout=10)
    assert second.status_code == 503
    assert "KV" in second.json()["error"]["message"]
    server.backend.release()
    first.join(10)
    assert server.stats()["counters"] == {"ok": 1, "out_of_memory": 1}
