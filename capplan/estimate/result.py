"""What `capplan estimate` returns: plain dataclasses, and their versioned JSON form."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from capplan.estimate.architecture import ModelSpec
from capplan.estimate.gpu_spec import GpuSpec
from capplan.estimate.memory_capplan import CapplanBudget
from capplan.estimate.memory_hf import HfBudget
from capplan.estimate.memory_vllm import VllmBudget
from capplan.estimate.quantization import QuantScheme, WeightStorage
from capplan.settings import ServerSettings

# Bump the minor version for added fields, the major one for renamed or removed fields.
# Documented in docs/estimate-schema.md.
SCHEMA_VERSION = "1.3"

DEFAULT_PROMPT_TOKENS = 512
DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class Workload:
    """The request shape and deployment the estimate is for."""

    prompt_tokens: int
    max_tokens: int
    prompt_tokens_is_default: bool
    max_tokens_is_default: bool
    runtime: str
    kv_dtype: str
    gpus: int = 1
    tp: int = 1
    margin_fraction: float = 0.03
    target_concurrency: int | None = None
    clients: int = 1
    concurrency: int | None = None  # --concurrency N: every term and timing at N requests
    alloc_conf: str = "default"  # hf: PYTORCH_CUDA_ALLOC_CONF (default | expandable)
    # hf: logits processors/warpers each holding a batch x vocab fp32 copy per step (sampling
    # with temperature + top-p, or min_new_tokens as in the H200 measurement).
    logits_processors: int = 2

    @property
    def replicas(self) -> int:
        return self.gpus // self.tp

    @property
    def request_tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass(frozen=True)
class MemoryTerms:
    """Every memory term on one GPU (one rank), the same names for both runtimes, evaluated at
    `concurrency` requests (--concurrency N, else the recommended concurrency)."""

    total_bytes: int
    weights_bytes: int
    non_torch_bytes: int  # CUDA context, cuBLAS workspaces (and NCCL under tp)
    activation_bytes: int
    allocator_reserve_bytes: int  # cached by the allocator beyond what is allocated
    margin_bytes: int
    kv_per_token_bytes: int
    kv_per_request_bytes: int
    kv_budget_bytes: int
    kv_in_use_bytes: int
    free_bytes: int
    concurrency: int = 0
    allocated_peak_bytes: int = 0  # weights + KV + activations: decides out-of-memory
    peak_bytes: int = 0  # everything the process holds as NVML shows it (context, cache)
    peak_phase: str = ""  # where the allocated peak falls (hf: "prefill" | "decode end")


@dataclass(frozen=True)
class Timing:
    """Step-model predictions for one replica: max(memory, compute, the runtime's floor) per
    step, with the basis of the floor and efficiencies (calibrated or the defaults)."""

    prefill_ms: float
    decode_ms_per_token_c1: float
    decode_ms_per_token_at_concurrency: float
    concurrency: int
    output_tokens_per_s_c1: float
    output_tokens_per_s_at_concurrency: float  # all sequences of the replica together
    request_s_c1: float
    request_s_at_concurrency: float
    requests_per_min: float  # all replicas
    bandwidth_efficiency: float
    compute_efficiency: float
    decode_slowdown: float
    floor_ms: float = 0.0  # the runtime's floor per forward pass for this model
    host_ms_per_sequence: float = 0.0  # host work each sequence adds to a step
    overhead_ms: float = 0.0  # per request before its first token (calibrated only)
    decode_bound: str = ""  # what sets the step at `concurrency`: floor | memory | compute
    calibrated: bool = False
    basis: str = ""  # where the floor and efficiencies come from


@dataclass(frozen=True)
class Alternative:
    """One change that would make the deployment fit, with its numbers."""

    kind: str  # quantization | max_tokens | gpu | gpus
    change: str  # e.g. "--quant nf4"
    concurrency: int
    detail: str


@dataclass(frozen=True)
class EstimateResult:
    schema_version: str
    gpu: GpuSpec
    model: ModelSpec
    quant: QuantScheme
    quant_source: str
    params: int
    params_by_role: dict[str, int]
    weights: WeightStorage
    workload: Workload
    memory: MemoryTerms
    hf: HfBudget | None
    vllm: VllmBudget | None
    fits: bool
    verdict: str
    concurrency: int  # safe, per replica
    concurrency_bound: str  # why not more: one sentence
    total_concurrency: int  # all replicas
    zero_margin_concurrency: int  # per replica, with no safety margin
    compute_bound_batch: (
        int  # decode turns compute bound past this batch; the cap on max_concurrent
    )
    largest_context: int  # single request, tokens, prompt + output
    target_max_tokens: int | None  # the max_tokens that allows --target-concurrency
    timing: Timing
    settings: ServerSettings
    alternatives: list[Alternative] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    capplan: CapplanBudget | None = None  # --runtime capplan: capplan serve's engine


def as_dict(result: EstimateResult) -> dict[str, Any]:
    """The documented JSON form (docs/estimate-schema.md)."""
    data = dataclasses.asdict(result)
    # The settings `--emit` writes (the rest of the server's settings are its own defaults).
    data["settings"] = result.settings.emitted()
    # Per-layer windows only matter for windowed models; [] means full attention everywhere.
    windows = result.model.layer_windows
    data["model"]["layer_windows"] = list(windows) if result.model.has_sliding_window else []
    data["workload"]["replicas"] = result.workload.replicas
    data["workload"]["request_tokens"] = result.workload.request_tokens
    if result.vllm is not None:
        data["vllm"]["max_concurrency_full_length"] = round(
            result.vllm.max_concurrency_full_length, 2
        )
        data["vllm"]["num_blocks"] = result.vllm.num_blocks
        data["vllm"]["workload_concurrency"] = result.vllm.workload_concurrency
        data["vllm"]["starts"] = result.vllm.starts
    if result.capplan is not None:
        data["capplan"]["block_size"] = result.capplan.block_size
        data["capplan"]["tokens"] = result.capplan.tokens
        data["capplan"]["workload_concurrency"] = result.capplan.workload_concurrency
        data["capplan"]["peak_bytes"] = result.capplan.peak_bytes
        data["capplan"]["workspace"]["total_bytes"] = result.capplan.workspace.total_bytes
    return data
