from __future__ import annotations

from typing import Any

import pynvml

from capplan.loadtest.telemetry.nvml import NvmlSource, decode_clock_reasons


def test_fake_uses_only_names_the_real_pynvml_has(make_nvml: Any) -> None:
    fake = make_nvml()
    names = [n for n in dir(fake) if n.startswith(("nvml", "NVML"))]
    assert len(names) >= 15
    assert [n for n in names if not hasattr(pynvml, n)] == []


def test_reads_every_gpu(make_nvml: Any, gpu_factory: Any) -> None:
    nvml = make_nvml(
        gpu_factory(name="GPU A", used=2 * 1024**3, util_gpu=87, temp_c=70),
        gpu_factory(name="GPU B", total=24 * 1024**3, power_mw=123_456, reasons=0x4 | 0x20),
    )
    source = NvmlSource(nvml)
    assert source.open()
    assert [(g.index, g.name, g.memory_total_mib) for g in source.gpus] == [
        (0, "GPU A", 10240.0),
        (1, "GPU B", 24576.0),
    ]
    row = source.sample(100.0)
    assert row["gpu0_mem_used_mib"] == 2048.0
    assert row["gpu0_mem_total_mib"] == 10240.0
    assert row["gpu0_util_pct"] == 87
    assert row["gpu0_mem_util_pct"] == 20
    assert row["gpu0_sm_clock_mhz"] == 1710
    assert row["gpu0_temp_c"] == 70
    assert row["gpu0_throttle"] == ""
    assert row["gpu1_power_w"] == 123.46
    assert row["gpu1_throttle"] == "sw_power_cap|sw_thermal"
    assert set(row) <= set(source.columns())
    source.close()
    assert nvml.shutdown


def test_energy_counter_is_joules_since_open(make_nvml: Any) -> None:
    nvml = make_nvml()
    source = NvmlSource(nvml)
    source.open()
    nvml.gpus[0].energy_mj += 12_345  # 12.345 J spent since open
    row = source.sample(1.0)
    assert row["gpu0_energy_j"] == 12.345
    assert row["gpu0_energy_src"] == "counter"


def test_without_energy_counter_power_is_integrated(make_nvml: Any, gpu_factory: Any) -> None:
    nvml = make_nvml(
        gpu_factory(power_mw=100_000, unsupported={"nvmlDeviceGetTotalEnergyConsumption"})
    )
    source = NvmlSource(nvml)
    source.open()
    assert source.sample(10.0)["gpu0_energy_j"] == 0.0
    nvml.gpus[0].power_mw = 300_000
    row = source.sample(12.0)  # 2 s at a mean of 200 W
    assert row["gpu0_energy_j"] == 400.0
    assert row["gpu0_energy_src"] == "power_integral"


def test_unsupported_reading_is_blank_and_not_asked_again(make_nvml: Any, gpu_factory: Any) -> None:
    nvml = make_nvml(gpu_factory(unsupported={"nvmlDeviceGetTemperature"}))
    source = NvmlSource(nvml)
    source.open()
    for t in range(3):
        row = source.sample(float(t))
    assert "gpu0_temp_c" not in row
    assert row["gpu0_util_pct"] == 40
    assert nvml.calls["nvmlDeviceGetTemperature"] == 1


def test_old_driver_falls_back_to_throttle_reasons(make_nvml: Any, gpu_factory: Any) -> None:
    nvml = make_nvml(
        gpu_factory(reasons=0x8, unsupported={"nvmlDeviceGetCurrentClocksEventReasons"})
    )
    source = NvmlSource(nvml)
    source.open()
    assert source.sample(0.0)["gpu0_throttle"] == "hw_slowdown"
    assert nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1


def test_no_driver_leaves_source_unavailable(make_nvml: Any) -> None:
    source = NvmlSource(make_nvml(init_error=True))
    assert not source.open()
    assert "Driver Not Loaded" in (source.error or "")
    assert source.columns() == []
    assert source.sample(0.0) == {}


def test_missing_pynvml_is_reported_not_raised() -> None:
    source = NvmlSource(None)
    assert not source.open()
    assert source.error == "pynvml not installed"


def test_unknown_clock_reason_bits_are_kept_as_hex() -> None:
    assert decode_clock_reasons(0x1 | 0x10000) == "gpu_idle|0x10000"
