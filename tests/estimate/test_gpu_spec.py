"""--gpu: catalog ids, `auto` through NVML (a fake with the real function names), custom."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from capplan.errors import InputError
from capplan.estimate.gpu_spec import resolve_gpu

GIB = 1024**3


class FakeNvml:
    """The slice of `pynvml` the estimator calls, answering like a real driver."""

    def __init__(self, devices: list[tuple[str, int]], *, init_error: Exception | None = None):
        self.devices = devices
        self.init_error = init_error
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.devices[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        total = self.devices[handle][1]
        return SimpleNamespace(total=total, free=total, used=0)

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")


def test_auto_reads_name_and_total_memory_from_nvml() -> None:
    nvml = FakeNvml([("NVIDIA GeForce RTX 3080", 10_496_000_000)])
    gpu = resolve_gpu("auto", nvml=nvml)
    assert gpu.id == "rtx3080"
    assert gpu.total_bytes == 10_496_000_000  # NVML's figure, not the catalog's
    assert gpu.bandwidth_bytes_s == 760e9
    assert nvml.calls == ["nvmlInit", "nvmlShutdown"]


def test_auto_counts_identical_gpus() -> None:
    nvml = FakeNvml([("NVIDIA A100-SXM4-80GB", 80 * GIB)] * 4)
    gpu = resolve_gpu("auto", nvml=nvml)
    assert (gpu.id, gpu.detected_count) == ("a100-80", 4)


def test_auto_with_no_gpu_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="found no GPU"):
        resolve_gpu("auto", nvml=FakeNvml([]))


def test_auto_without_a_driver_is_a_clear_error() -> None:
    nvml = FakeNvml([], init_error=RuntimeError("NVML Shared Library Not Found"))
    with pytest.raises(InputError, match=r"no NVIDIA driver .*--gpu rtx3080"):
        resolve_gpu("auto", nvml=nvml)


def test_auto_unknown_gpu_asks_for_bandwidth() -> None:
    nvml = FakeNvml([("NVIDIA Quantum X9", 32 * GIB)])
    with pytest.raises(InputError, match="--bandwidth"):
        resolve_gpu("auto", nvml=nvml)


def test_custom_figures() -> None:
    gpu = resolve_gpu(None, vram="24GiB", bandwidth="936GB/s", tflops="71")
    assert (gpu.total_bytes, gpu.bandwidth_bytes_s, gpu.tflops_fp16) == (24 * GIB, 936e9, 71.0)


def test_custom_vram_overrides_a_catalog_gpu() -> None:
    assert resolve_gpu("rtx3090", vram="20GiB").total_bytes == 20 * GIB


@pytest.mark.parametrize("vram", ["24 gigs", "GiB", "-1GiB"])
def test_malformed_vram_names_the_expected_form(vram: str) -> None:
    with pytest.raises(InputError, match="24GiB"):
        resolve_gpu(None, vram=vram, bandwidth="936GB/s")


def test_unknown_gpu_suggests_the_closest_id() -> None:
    with pytest.raises(InputError, match=r"^unknown GPU 'rtx308'; did you mean rtx3080"):
        resolve_gpu("rtx308")
