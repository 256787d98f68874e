"""Accelerator memory: the VRAM admission guard and out-of-memory recognition (any device).

Both take a torch.cuda-like object (`memory_allocated(device)`,
`get_device_properties(device).total_memory`, `empty_cache()`, and when present
`mem_get_info(device)` and `memory_reserved(device)`) so tests inject a fake one.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any

from reference_server.backend import BackendOutOfMemory


class VramGuard:
    """Refuses new work while memory in use is above `fraction` of the device's total.

    In use = `memory_allocated` (live tensors) + what torch cannot have: the CUDA context,
    cuBLAS workspaces and other processes (device used - torch's reserved pool, from
    `mem_get_info`). allocated alone misses the context (400 MiB or more), so on a card that
    the weights nearly fill, a 0.95 guard would never fire before a real out-of-memory. The
    allocator's cached free blocks are not counted: torch reuses them, and counting them would
    refuse every request after the first peak.
    """

    def __init__(self, cuda: Any, fraction: float, device_index: int = 0) -> None:
        self.cuda = cuda
        self.fraction = fraction
        self.device_index = device_index

    def usage(self) -> tuple[int, int]:
        """(bytes in use, device total)."""
        index = self.device_index
        allocated = int(self.cuda.memory_allocated(index))
        total = int(self.cuda.get_device_properties(index).total_memory)
        mem_get_info = getattr(self.cuda, "mem_get_info", None)
        memory_reserved = getattr(self.cuda, "memory_reserved", None)
        if callable(mem_get_info) and callable(memory_reserved):
            free, device_total = (int(v) for v in mem_get_info(index))
            outside_torch = (device_total - free) - int(memory_reserved(index))
            allocated += max(0, outside_torch)
        return allocated, total

    def over(self) -> tuple[bool, float]:
        """(refuse?, fraction in use)."""
        allocated, total = self.usage()
        used = allocated / total if total else 0.0
        return used > self.fraction, used


def device_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


# How allocation failures read when they arrive as a plain RuntimeError: torch's CPU allocator
# ("DefaultCPUAllocator: can't allocate memory"), CUDA and ROCm ("out of memory"), MPS.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Any allocation failure: BackendOutOfMemory, MemoryError (host), torch.OutOfMemoryError
    (checked by name, without importing torch), or a RuntimeError that says it ran out."""
    if isinstance(exc, (BackendOutOfMemory, MemoryError)):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return any(text in message for text in _OOM_MESSAGES)
    return False


def free_cache(cuda: Any, error: BaseException | None = None) -> None:
    """Give memory back after an allocation failure so the next request has room: on cuda the
    allocator's cached blocks, and unreachable tensors (a failed pass leaves reference cycles)
    unless the backend already freed its own (BackendOutOfMemory: the engine collected them on
    its thread; the emulated backend holds none), so a run of emulated refusals costs no gc."""
    if not isinstance(error, BackendOutOfMemory):
        gc.collect()
    empty = getattr(cuda, "empty_cache", None)
    if callable(empty):
        # A failing cleanup must not turn a 503 into a 500.
        with contextlib.suppress(Exception):
            empty()
