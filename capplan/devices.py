"""The GPUs NVML sees: one listing for the estimator (`--gpu auto`), telemetry and summaries.

`nvml` is the `pynvml` module (nvidia-ml-py) or a fake with the same function names; tests
inject one. No driver, no library and no GPU all mean an empty listing with the reason.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    memory_total_bytes: int
    handle: Any = field(default=None, compare=False, repr=False)


def load_nvml() -> Any | None:
    """The pynvml module, or None when nvidia-ml-py is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def enumerate_devices(nvml: Any) -> list[Device]:
    """Every GPU of an NVML already initialised, with its handle (NVMLError propagates)."""
    devices = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        devices.append(Device(index, str(name), total, handle))
    return devices


def list_devices(nvml: Any = None) -> tuple[list[Device], str | None]:
    """(devices, why there are none): NVML opened, listed and shut down again. The reason reads
    after "found": "no NVIDIA driver (...)", "no GPU", ..."""
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        return [], "no NVML (pip install nvidia-ml-py)"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, OSError, ...
        return [], f"no NVIDIA driver ({exc})"
    try:
        devices = enumerate_devices(nvml)
    except Exception as exc:
        return [], f"no readable GPU ({exc})"
    finally:
        shutdown = getattr(nvml, "nvmlShutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):
                shutdown()
    return devices, None if devices else "no GPU"
