"""Which GPU: a catalog id, `auto` (NVML), or custom `--vram/--bandwidth/--tflops` figures."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

from capplan.catalog import loader
from capplan.devices import list_devices, load_nvml
from capplan.errors import InputError
from capplan.units import parse_bandwidth, parse_bytes, parse_tflops


@dataclass(frozen=True)
class GpuSpec:
    """The figures the estimator uses for one GPU."""

    id: str
    name: str
    total_bytes: int
    bandwidth_bytes_s: float
    tflops_fp16: float
    bf16: bool = True
    fp8: bool = False
    source: str = ""
    check: tuple[str, ...] = ()
    detected_count: int = 1  # how many such GPUs NVML saw (auto only)
    kind: str = "gpu"  # "gpu", or "cpu" for CPU inference (total = RAM)
    cores: int = 0  # CPU cores (cpu only)
    sm_count: int = 0  # streaming multiprocessors when catalogued, else 0
    cuda_context_bytes: int | None = None  # measured for this GPU; None: the runtime's default


# CPU inference defaults, overridable with --bandwidth and --tflops: dual-channel DDR4/DDR5
# sustains ~40 GB/s; one AVX2/AVX-512 core ~0.1 dense TFLOPS.
CPU_BANDWIDTH_GBS = 40.0
CPU_TFLOPS_PER_CORE = 0.1


def physical_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def cpu_spec(
    *,
    vram: str | None = None,
    bandwidth: str | None = None,
    tflops: str | None = None,
    cores: int | None = None,
) -> GpuSpec:
    """CPU inference: RAM for memory, cores for compute (each default detected or assumed)."""
    if cores is not None and cores < 1:
        raise InputError(f"--cores must be at least 1, got {cores}")
    count = cores or os.cpu_count() or 1
    ram = parse_bytes(vram, option="--vram") if vram else physical_memory_bytes()
    if ram is None:
        raise InputError("cannot read this machine's RAM; give it with --vram, e.g. 32GiB")
    assumed = []
    if bandwidth is None:
        assumed.append(f"{CPU_BANDWIDTH_GBS:g} GB/s assumed (--bandwidth)")
    if tflops is None:
        assumed.append(f"{CPU_TFLOPS_PER_CORE:g} TFLOPS per core assumed (--tflops)")
    return GpuSpec(
        id="cpu",
        name=f"CPU ({count} cores)",
        total_bytes=ram,
        bandwidth_bytes_s=parse_bandwidth(bandwidth) if bandwidth else CPU_BANDWIDTH_GBS * 1e9,
        tflops_fp16=parse_tflops(tflops) if tflops else count * CPU_TFLOPS_PER_CORE,
        source="this machine" + (f"; {', '.join(assumed)}" if assumed else ""),
        kind="cpu",
        cores=count,
    )


def from_catalog(entry: loader.GpuEntry) -> GpuSpec:
    return GpuSpec(
        id=entry.id,
        name=entry.name,
        total_bytes=entry.total_bytes,
        bandwidth_bytes_s=entry.bandwidth_gbs * 1e9,
        tflops_fp16=entry.tflops_fp16,
        bf16=entry.bf16,
        fp8=entry.fp8,
        source=entry.source,
        cuda_context_bytes=(
            entry.cuda_context_mib * 1024**2 if entry.cuda_context_mib is not None else None
        ),
        check=entry.check,
        sm_count=entry.sms or 0,
    )


def _normalise(name: str) -> str:
    name = name.lower()
    for vendor in ("nvidia", "geforce", "tesla"):
        name = name.replace(vendor, "")
    return re.sub(r"[^a-z0-9]", "", name)


def match_catalog_name(device_name: str, total_bytes: int) -> loader.GpuEntry | None:
    """The catalog GPU an NVML name such as 'NVIDIA GeForce RTX 3080' refers to."""
    wanted = _normalise(device_name)
    scored: list[tuple[int, int, loader.GpuEntry]] = []
    for entry in loader.gpus().values():
        names = {
            _normalise(entry.name),
            _normalise(entry.id),
            _normalise(re.sub(r"\s*\d+GB$", "", entry.name)),
            _normalise(re.sub(r"\s*(SXM|PCIe|\d+GB)", "", entry.name)),
        }
        score = 0
        for name in names:
            if name == wanted:
                score = max(score, 1000)
            elif (
                name
                and wanted.startswith(name)
                and not re.match(r"(ti|super)", wanted[len(name) :])
            ):
                # Longest prefix wins: 'h100pcie' over 'h100', 'a100' over 'a10'.
                score = max(score, len(name))
        if score:
            distance = abs(entry.total_mib * 1024**2 - total_bytes)
            scored.append((score, -distance, entry))
    if not scored:
        return None
    # Same name, several memory sizes (A100 40/80, V100 16/32): the closest total wins the tie.
    return max(scored, key=lambda item: (item[0], item[1]))[2]


def detect_gpus(nvml: Any = None) -> list[tuple[str, int]]:
    """(name, total bytes) of every GPU NVML sees; InputError when it sees none."""
    if nvml is None:
        nvml = load_nvml()
        if nvml is None:
            raise InputError(
                "--gpu auto needs NVML (pip install nvidia-ml-py); or name a GPU, e.g. "
                "--gpu rtx3080"
            )
    devices, why = list_devices(nvml)
    if not devices:
        raise InputError(f"--gpu auto found {why}; name a GPU instead, e.g. --gpu rtx3080")
    return [(d.name, d.memory_total_bytes) for d in devices]


def resolve_gpu(
    gpu: str | None,
    *,
    vram: str | None = None,
    bandwidth: str | None = None,
    tflops: str | None = None,
    nvml: Any = None,
    cores: int | None = None,
) -> GpuSpec:
    """The GPU to plan for. Custom figures override the catalog's or NVML's."""
    if cores is not None and (gpu or "").strip().lower() != "cpu":
        raise InputError("--cores applies to CPU inference only; add --gpu cpu or drop --cores")
    if gpu is None or gpu == "custom":
        if vram is None or bandwidth is None:
            raise InputError(
                "name a GPU (--gpu rtx3080, --gpu auto) or give --vram and --bandwidth "
                "(e.g. --vram 24GiB --bandwidth 936GB/s --tflops 71)"
            )
        return GpuSpec(
            id="custom",
            name="custom GPU",
            total_bytes=parse_bytes(vram),
            bandwidth_bytes_s=parse_bandwidth(bandwidth),
            tflops_fp16=parse_tflops(tflops) if tflops is not None else 100.0,
            source="command line" + ("" if tflops else "; --tflops not given, 100 assumed"),
        )
    if gpu.strip().lower() == "cpu":
        return cpu_spec(vram=vram, bandwidth=bandwidth, tflops=tflops, cores=cores)
    if gpu.strip().lower() == "auto":
        spec = _auto(nvml, bandwidth)
    else:
        spec = from_catalog(loader.gpu(gpu))
    return _override(spec, vram=vram, bandwidth=bandwidth, tflops=tflops)


def _auto(nvml: Any, bandwidth: str | None) -> GpuSpec:
    found = detect_gpus(nvml)
    name, total = found[0]
    others = {n for n, _ in found[1:]}
    if others - {name}:
        raise InputError(
            f"--gpu auto found different GPUs ({', '.join(sorted({name, *others}))}); "
            "name one, e.g. --gpu rtx3090"
        )
    entry = match_catalog_name(name, total)
    if entry is None:
        if bandwidth is None:
            raise InputError(
                f"--gpu auto found '{name}', which is not in the catalog; add "
                "--bandwidth GB/s and --tflops (see `capplan catalog gpus`)"
            )
        return GpuSpec(
            id="auto",
            name=name,
            total_bytes=total,
            bandwidth_bytes_s=0.0,
            tflops_fp16=100.0,
            source="NVML",
            detected_count=len(found),
        )
    # Speeds from the catalog; name and memory as NVML reports this very card.
    return replace(
        from_catalog(entry),
        name=name,
        total_bytes=total,
        source=f"NVML (memory) + catalog {entry.id} ({entry.source})",
        detected_count=len(found),
    )


def _override(
    spec: GpuSpec, *, vram: str | None, bandwidth: str | None, tflops: str | None
) -> GpuSpec:
    if vram is None and bandwidth is None and tflops is None:
        return spec
    return GpuSpec(
        id=spec.id,
        name=spec.name,
        total_bytes=parse_bytes(vram) if vram else spec.total_bytes,
        bandwidth_bytes_s=parse_bandwidth(bandwidth) if bandwidth else spec.bandwidth_bytes_s,
        tflops_fp16=parse_tflops(tflops) if tflops else spec.tflops_fp16,
        bf16=spec.bf16,
        fp8=spec.fp8,
        source=spec.source + "; overridden on the command line",
        check=spec.check,
        detected_count=spec.detected_count,
        kind=spec.kind,
        cores=spec.cores,
        sm_count=spec.sm_count,
    )
