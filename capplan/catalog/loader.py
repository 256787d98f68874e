"""Load the built-in GPU and model catalogs (TOML beside this module)."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from capplan.errors import InputError

CATALOG_DIR = Path(__file__).resolve().parent
MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class GpuEntry:
    """One catalog GPU with datasheet figures and the memory total CUDA reports."""

    id: str
    name: str
    vram_nominal_gib: float
    total_mib: int
    bandwidth_gbs: float
    tflops_fp16: float
    bf16: bool
    fp8: bool
    source: str
    notes: str = ""
    torch_total_gib: float | None = None
    sms: int | None = None  # streaming multiprocessors (vLLM's Triton sampler buffer)
    check: tuple[str, ...] = ()
    cuda_context_mib: int | None = None  # measured on this GPU; else the runtime's default
    cuda_context_source: str = ""

    @property
    def total_bytes(self) -> int:
        """What torch/vLLM see as total memory: torch's figure when known, else nvidia-smi's."""
        if self.torch_total_gib is not None:
            return int(self.torch_total_gib * GIB)
        return self.total_mib * MIB

    @property
    def nvidia_smi_bytes(self) -> int:
        return self.total_mib * MIB


@dataclass(frozen=True)
class ModelEntry:
    """One catalog model: the config.json fields the estimator needs, plus provenance."""

    id: str
    hf_id: str
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    max_positions: int
    params: int
    dtype: str
    source: str
    head_dim: int | None = None
    sliding_window: int | None = None
    sliding_layers: str | None = None
    check: tuple[str, ...] = ()


def read_toml(name: str) -> dict[str, Any]:
    """One TOML file of this catalog."""
    with (CATALOG_DIR / name).open("rb") as handle:
        return tomllib.load(handle)


@cache
def gpus() -> dict[str, GpuEntry]:
    """All catalog GPUs by id, in file order."""
    return {
        key: GpuEntry(id=key, **{**row, "check": tuple(row.get("check", ()))})
        for key, row in read_toml("gpus.toml").items()
    }


@cache
def models() -> dict[str, ModelEntry]:
    """All catalog models by id, in file order."""
    return {
        key: ModelEntry(id=key, **{**row, "check": tuple(row.get("check", ()))})
        for key, row in read_toml("models.toml").items()
    }


def suggest(word: str, choices: list[str]) -> str:
    """`"; did you mean X?"` for the closest choices, or the list of valid ones."""
    close = difflib.get_close_matches(word.lower(), choices, n=3, cutoff=0.5)
    if close:
        return "; did you mean " + " or ".join(close) + "?"
    return "; choose one of " + ", ".join(choices)


def gpu(gpu_id: str) -> GpuEntry:
    """The catalog GPU `gpu_id`, or an `InputError` naming the closest ids."""
    table = gpus()
    key = gpu_id.strip().lower()
    if key in table:
        return table[key]
    raise InputError(f"unknown GPU '{gpu_id}'" + suggest(key, list(table)))


def model(model_id: str) -> ModelEntry:
    """The catalog model `model_id`, or an `InputError` naming the closest ids."""
    table = models()
    key = model_id.strip().lower()
    if key in table:
        return table[key]
    raise InputError(f"unknown model '{model_id}'" + suggest(key, list(table)))


@dataclass(frozen=True)
class RuntimeEntry:
    """What a runtime adds to the roofline, each default with the measurement it comes from."""

    id: str
    name: str
    gpu_floor_ms_per_layer: float
    gpu_host_ms_per_sequence: float
    gpu_floor_source: str
    cpu_floor_ms_per_layer: float
    cpu_host_ms_per_sequence: float
    cpu_floor_source: str
    bandwidth_efficiency: float
    bandwidth_source: str
    compute_efficiency: float
    compute_source: str
    cuda_context_bytes: int
    cuda_context_source: str


@cache
def runtimes() -> dict[str, RuntimeEntry]:
    """The runtime profiles by id (`runtimes.toml`)."""
    return {key: RuntimeEntry(id=key, **row) for key, row in read_toml("runtimes.toml").items()}


def runtime(runtime_id: str) -> RuntimeEntry:
    table = runtimes()
    if runtime_id in table:
        return table[runtime_id]
    raise InputError(f"unknown --runtime '{runtime_id}'" + suggest(runtime_id, list(table)))
