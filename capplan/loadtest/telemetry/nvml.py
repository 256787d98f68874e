"""Per-GPU readings from NVML.

The `pynvml` module (nvidia-ml-py) is passed in, so tests hand over a fake object with the same
function names; `capplan.devices.load_nvml()` returns the real one, or None when it is not
installed. A reading that the GPU or driver does not support is left blank and not asked for
again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from capplan.devices import enumerate_devices

# Bits of nvmlDeviceGetCurrentClocksEventReasons (formerly ...ThrottleReasons), nvml.h.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock",
}

_MIB = 1024 * 1024

GPU_FIELDS = (
    "mem_used_mib",
    "mem_total_mib",
    "util_pct",
    "mem_util_pct",
    "sm_clock_mhz",
    "power_w",
    "temp_c",
    "throttle",
    "energy_j",
    "energy_src",
)


def decode_clock_reasons(mask: int) -> str:
    """`0x24` -> `"sw_power_cap|sw_thermal"`; unknown bits appear as hex."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_EVENT_REASONS)
    if rest:
        names.append(hex(rest))
    return "|".join(names)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_mib: float


class NvmlSource:
    """Reads every visible GPU through NVML; energy is reported since `open()`."""

    name = "nvml"

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml: Any = nvml
        self._handles: list[Any] = []
        self.gpus: list[GpuInfo] = []
        self.error: str | None = None
        self._unsupported: set[tuple[int, str]] = set()
        self._energy0_mj: dict[int, int] = {}
        self._integrated_j: dict[int, float] = {}
        self._last_power: dict[int, tuple[float, float]] = {}
        self._open = False

    @property
    def available(self) -> bool:
        return self._open and bool(self._handles)

    def open(self) -> bool:
        """Initialise NVML; False (with `error` set) when there is no driver or no GPU."""
        nvml = self._nvml
        if nvml is None:
            self.error = "pynvml not installed"
            return False
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses, or OSError from a missing library
            self.error = f"nvmlInit failed: {exc}"
            return False
        self._open = True
        try:
            devices = enumerate_devices(nvml)
        except nvml.NVMLError as exc:
            self.error = f"listing GPUs failed: {exc}"
            self.close()
            return False
        for device in devices:
            self._handles.append(device.handle)
            self.gpus.append(GpuInfo(device.index, device.name, device.memory_total_bytes / _MIB))
        if not self._handles:
            self.error = "NVML sees no GPU"
            self.close()
            return False
        for index, handle in enumerate(self._handles):
            energy = self._read(index, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            if energy is not None:
                self._energy0_mj[index] = int(energy)
        return True

    def columns(self) -> list[str]:
        return [f"gpu{gpu.index}_{field}" for gpu in self.gpus for field in GPU_FIELDS]

    def sample(self, t: float) -> dict[str, object]:
        """One reading of every GPU, taken at RunClock time `t`."""
        row: dict[str, object] = {}
        if not self.available:
            return row
        nvml = self._nvml
        for index, handle in enumerate(self._handles):
            prefix = f"gpu{index}_"
            mem = self._read(index, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
            if mem is not None:
                row[prefix + "mem_used_mib"] = round(mem.used / _MIB, 1)
                row[prefix + "mem_total_mib"] = round(mem.total / _MIB, 1)
            util = self._read(index, "util", nvml.nvmlDeviceGetUtilizationRates, handle)
            if util is not None:
                row[prefix + "util_pct"] = util.gpu
                row[prefix + "mem_util_pct"] = util.memory
            clock = self._read(
                index, "clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM
            )
            if clock is not None:
                row[prefix + "sm_clock_mhz"] = clock
            power_mw = self._read(index, "power", nvml.nvmlDeviceGetPowerUsage, handle)
            if power_mw is not None:
                row[prefix + "power_w"] = round(power_mw / 1000.0, 2)
            temp = self._read(
                index, "temp", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
            )
            if temp is not None:
                row[prefix + "temp_c"] = temp
            reasons = self._clock_reasons(index, handle)
            if reasons is not None:
                row[prefix + "throttle"] = decode_clock_reasons(reasons)
            row.update(self._energy(index, handle, t, power_mw))
        return row

    def close(self) -> None:
        if self._open and self._nvml is not None:
            # Shutting down a half-initialised library must not mask the original error.
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._open = False

    def _clock_reasons(self, index: int, handle: Any) -> int | None:
        # Driver 535+ renamed "throttle reasons" to "clocks event reasons"; older ones lack it.
        for fn_name in (
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        ):
            fn = getattr(self._nvml, fn_name, None)
            if fn is None or (index, fn_name) in self._unsupported:
                continue
            value = self._read(index, fn_name, fn, handle)
            if value is not None:
                return int(value)
        return None

    def _energy(
        self, index: int, handle: Any, t: float, power_mw: float | None
    ) -> dict[str, object]:
        prefix = f"gpu{index}_"
        if index in self._energy0_mj:
            now_mj = self._read(
                index, "energy", self._nvml.nvmlDeviceGetTotalEnergyConsumption, handle
            )
            if now_mj is not None:
                joules = (int(now_mj) - self._energy0_mj[index]) / 1000.0
                return {prefix + "energy_j": round(joules, 3), prefix + "energy_src": "counter"}
        if power_mw is None:
            return {}
        # No energy counter (pre-Volta, some vGPUs): integrate power, trapezoid between samples.
        last = self._last_power.get(index)
        total = self._integrated_j.get(index, 0.0)
        if last is not None:
            last_t, last_w = last
            total += max(0.0, t - last_t) * (last_w + power_mw / 1000.0) / 2.0
        self._integrated_j[index] = total
        self._last_power[index] = (t, power_mw / 1000.0)
        return {prefix + "energy_j": round(total, 3), prefix + "energy_src": "power_integral"}

    def _read(self, index: int, what: str, fn: Any, *args: Any) -> Any:
        if (index, what) in self._unsupported:
            return None
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            self._unsupported.add((index, what))
            return None
