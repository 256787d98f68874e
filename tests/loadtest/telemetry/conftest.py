"""A fake `pynvml` module: pynvml's real function and constant names, scripted readings."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


@dataclass
class FakeGpu:
    name: str = "NVIDIA GeForce RTX 3080"
    total: int = 10 * 1024**3
    used: int = 1024**3
    util_gpu: int = 40
    util_mem: int = 20
    sm_clock: int = 1710
    power_mw: int = 220_000
    temp_c: int = 61
    reasons: int = 0
    energy_mj: int = 5_000_000
    unsupported: set[str] = field(default_factory=set)


@dataclass
class _Mem:
    total: int
    used: int
    free: int


@dataclass
class _Util:
    gpu: int
    memory: int


class FakeNvml:
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu], *, init_error: bool = False) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.calls: dict[str, int] = {}
        self.threads: set[str] = set()
        self.shutdown = False
        self.on_memory_read: Callable[[], None] | None = None

    def _call(self, name: str, index: int | None = None) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.threads.add(threading.current_thread().name)
        if index is not None and name in self.gpus[index].unsupported:
            raise NVMLError_NotSupported("Not Supported")

    def nvmlInit(self) -> None:
        self._call("nvmlInit")
        if self.init_error:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call("nvmlDeviceGetHandleByIndex")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        self._call("nvmlDeviceGetName", handle)
        return self.gpus[handle].name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Mem:
        self._call("nvmlDeviceGetMemoryInfo", handle)
        if self.on_memory_read is not None:
            self.on_memory_read()
        gpu = self.gpus[handle]
        return _Mem(gpu.total, gpu.used, gpu.total - gpu.used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Util:
        self._call("nvmlDeviceGetUtilizationRates", handle)
        return _Util(self.gpus[handle].util_gpu, self.gpus[handle].util_mem)

    def nvmlDeviceGetClockInfo(self, handle: int, clock_type: int) -> int:
        self._call("nvmlDeviceGetClockInfo", handle)
        assert clock_type == self.NVML_CLOCK_SM
        return self.gpus[handle].sm_clock

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._call("nvmlDeviceGetPowerUsage", handle)
        return self.gpus[handle].power_mw

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        self._call("nvmlDeviceGetTemperature", handle)
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self.gpus[handle].temp_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        self._call("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return self.gpus[handle].reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:
        self._call("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return self.gpus[handle].reasons

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self._call("nvmlDeviceGetTotalEnergyConsumption", handle)
        return self.gpus[handle].energy_mj


@pytest.fixture
def make_nvml() -> Callable[..., Any]:
    def make(*gpus: FakeGpu, init_error: bool = False) -> FakeNvml:
        return FakeNvml(list(gpus) or [FakeGpu()], init_error=init_error)

    return make


@pytest.fixture
def gpu_factory() -> type[FakeGpu]:
    return FakeGpu
