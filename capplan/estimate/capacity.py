"""Capacity of one replica: weights, the runtime's memory budget, concurrency and roofline."""

from __future__ import annotations

from dataclasses import dataclass, replace

from capplan.catalog import loader
from capplan.catalog.vllm_versions import vllm_version
from capplan.errors import InputError
from capplan.estimate.architecture import ModelSpec
from capplan.estimate.calibration import StepCosts, step_costs
from capplan.estimate.gpu_spec import GpuSpec
from capplan.estimate.kv_cache import (
    kv_bytes_for_context,
    kv_bytes_per_token,
    kv_dtype_bytes,
    max_tokens_in_budget,
)
from capplan.estimate.memory_capplan import (
    CapplanBudget,
    EngineLimits,
    block_bytes,
    capplan_budget,
    default_prefill_chunk,
)
from capplan.estimate.memory_hf import (
    CPU_PROCESS_BYTES,
    HfBudget,
    HfShape,
    hf_budget,
    largest_fitting,
)
from capplan.estimate.memory_vllm import VllmBudget, default_scheduler_limits, vllm_budget
from capplan.estimate.quantization import QuantScheme, WeightStorage, weight_storage
from capplan.estimate.result import MemoryTerms, Workload
from capplan.estimate.roofline import Roofline, attention_width, matmul_params
from capplan.estimate.shape import DecoderShape

RUNTIMES = ("hf", "vllm", "capplan")


@dataclass(frozen=True)
class VllmOptions:
    """vLLM's settings as given; None: the release's own default."""

    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    version: str | None = None  # None: the newest release line capplan knows
    enforce_eager: bool = False


@dataclass(frozen=True)
class Capacity:
    """Everything about one replica that depends on memory, and its step model."""

    weights: WeightStorage
    kv_element_bytes: int
    hf: HfBudget | None
    vllm: VllmBudget | None
    concurrency: int  # what fits in memory (hf: device peak + margin within total)
    zero_margin_concurrency: int  # hf: where generate() raises out-of-memory
    largest_context: int
    memory: MemoryTerms
    roofline: Roofline
    costs: StepCosts
    capplan: CapplanBudget | None = None  # --runtime capplan: the reference server's engine


def check_parallelism(spec: ModelSpec, gpus: int, tp: int) -> None:
    if gpus < 1 or tp < 1:
        raise InputError("--gpus and --tp must be at least 1")
    if gpus % tp:
        raise InputError(f"--gpus {gpus} is not a multiple of --tp {tp}; replicas = gpus / tp")
    if spec.heads % tp:
        raise InputError(f"{spec.id} has {spec.heads} attention heads; --tp must divide them")
    # vLLM's QKVParallelLinear: fewer KV heads than ranks are replicated (tp a multiple of
    # kv_heads); more are split evenly (kv_heads a multiple of tp).
    kv = spec.kv_heads
    if (tp >= kv and tp % kv) or (tp < kv and kv % tp):
        raise InputError(
            f"{spec.id} has {kv} KV heads; --tp must divide them or be a multiple of them"
        )


def cuda_context_bytes(gpu: GpuSpec, runtime: str) -> int:
    """The CUDA context and workspaces: measured for this GPU when the catalog has it."""
    if gpu.cuda_context_bytes is not None:
        return gpu.cuda_context_bytes
    return loader.runtime(runtime).cuda_context_bytes


def step_model(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    costs: StepCosts,
) -> Roofline:
    """The roofline of one rank with the runtime's floor and efficiencies (`costs`)."""
    tp = workload.tp
    element = kv_dtype_bytes(workload.kv_dtype)
    return Roofline(
        weights_bytes=weight_storage(spec, scheme, tp=tp).total_bytes,
        matmul_params=matmul_params(spec) // tp,
        attention_width=attention_width(spec) // tp,
        kv_bytes_per_token=kv_bytes_per_token(spec, element, tp),
        bandwidth_bytes_s=gpu.bandwidth_bytes_s,
        tflops=gpu.tflops_fp16,
        decode_slowdown=scheme.decode_slowdown,
        prefill_slowdown=scheme.prefill_slowdown,
        bandwidth_efficiency=costs.bandwidth_efficiency,
        compute_efficiency=costs.compute_efficiency,
        floor_ms=costs.floor_ms_per_layer * spec.layers,
        host_ms_per_sequence=costs.host_ms_per_sequence,
        overhead_ms=costs.overhead_ms,
    )


def capacity(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    vllm_options: VllmOptions | None = None,
    costs: StepCosts | None = None,
) -> Capacity:
    costs = costs or step_costs(workload.runtime, device_kind=gpu.kind)
    element = kv_dtype_bytes(workload.kv_dtype)
    weights = weight_storage(spec, scheme, tp=workload.tp)
    roof = step_model(gpu, spec, scheme, workload, costs)
    if workload.runtime == "vllm":
        return _vllm_capacity(
            gpu, spec, scheme, workload, vllm_options, weights, element, roof, costs
        )
    if workload.runtime == "capplan":
        utilization = (vllm_options or VllmOptions()).gpu_memory_utilization
        return _capplan_capacity(
            gpu, spec, scheme, workload, utilization, weights, element, roof, costs
        )
    return _hf_capacity(gpu, spec, scheme, workload, weights, element, roof, costs)


def _hf_capacity(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    weights: WeightStorage,
    element: int,
    roof: Roofline,
    costs: StepCosts,
) -> Capacity:
    shape = hf_shape(gpu, spec, scheme, workload, weights, element)
    total, margin = gpu.total_bytes, workload.margin_fraction
    # Past the compute-bound batch more concurrency buys no throughput: the memory search stops
    # there (each step of it replays the allocator).
    limit = roof.compute_bound_batch
    fit = hf_budget(shape, total_bytes=total, margin_fraction=margin, at=None, limit=limit)
    at = workload.concurrency or max(1, fit.max_concurrency)
    hf = hf_budget(shape, total_bytes=total, margin_fraction=margin, at=at, limit=limit)
    largest = min(
        spec.max_positions, max_tokens_in_budget(spec, hf.kv_budget_bytes, element, workload.tp)
    )
    peak = hf.at
    memory = MemoryTerms(
        total_bytes=hf.total_bytes,
        weights_bytes=hf.weights_bytes,
        non_torch_bytes=hf.cuda_context_bytes,
        activation_bytes=peak.activation_bytes,
        allocator_reserve_bytes=peak.reserved_peak_bytes - peak.allocated_peak_bytes,
        margin_bytes=hf.margin_bytes,
        kv_per_token_bytes=hf.kv_per_token_bytes,
        kv_per_request_bytes=hf.kv_per_request_bytes,
        kv_budget_bytes=hf.kv_budget_bytes,
        kv_in_use_bytes=peak.kv_bytes,
        free_bytes=hf.free_bytes,
        concurrency=peak.concurrency,
        allocated_peak_bytes=peak.allocated_peak_bytes,
        peak_bytes=peak.peak_bytes,
        peak_phase=peak.phase,
    )
    return Capacity(
        weights=weights,
        kv_element_bytes=element,
        hf=hf,
        vllm=None,
        concurrency=hf.max_concurrency,
        zero_margin_concurrency=hf.oom_concurrency,
        largest_context=max(0, largest),
        memory=memory,
        roofline=roof,
        costs=costs,
    )


def hf_shape(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    weights: WeightStorage,
    element: int,
) -> HfShape:
    context = CPU_PROCESS_BYTES if gpu.kind == "cpu" else cuda_context_bytes(gpu, "hf")
    return HfShape(
        spec=spec,
        scheme=scheme,
        weights_bytes=weights.total_bytes,
        kv_element_bytes=element,
        prompt_tokens=workload.prompt_tokens,
        max_tokens=workload.max_tokens,
        context_bytes=context,
        tp=workload.tp,
        # CPU memory has no caching allocator of its own to fragment.
        alloc_conf="none" if gpu.kind == "cpu" else workload.alloc_conf,
        logits_processors=workload.logits_processors,
    )


def _capplan_capacity(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    utilization: float | None,
    weights: WeightStorage,
    element: int,
    roof: Roofline,
    costs: StepCosts,
) -> Capacity:
    """The reference server's fixed-KV engine: its pool is sized once for the device, and as
    many requests run as their reservations (prompt + max_tokens, whole blocks) fit in it."""
    cpu = gpu.kind == "cpu"
    shape = DecoderShape.from_spec(spec, scheme, element, workload.tp)

    def budget(max_batch: int) -> CapplanBudget:
        chunk = default_prefill_chunk(gpu.kind)
        limits = EngineLimits(max_batch, chunk, spec.max_positions)
        return capplan_budget(
            shape,
            limits,
            total_bytes=gpu.total_bytes,
            weights_bytes=weights.total_bytes,
            non_torch_bytes=CPU_PROCESS_BYTES if cpu else cuda_context_bytes(gpu, "capplan"),
            request_tokens=workload.request_tokens,
            cpu=cpu,
            gpu_memory_utilization=utilization,
        )

    # The workspace grows with the batch (its logits and sampling) and shrinks the pool: the
    # concurrency is the largest batch whose own workspace still leaves its reservations room
    # (searched up to the compute-bound batch, past which more buys no throughput).
    fit = largest_fitting(
        lambda batch: budget(batch).workload_concurrency >= batch,
        highest=max(1, roof.compute_bound_batch),
    )
    at = workload.concurrency or max(1, fit)
    final = budget(at)
    kv_in_use = min(at, fit) * final.request_blocks * block_bytes(shape)
    memory = MemoryTerms(
        total_bytes=final.total_bytes,
        weights_bytes=final.weights_bytes,
        non_torch_bytes=final.non_torch_bytes,
        activation_bytes=final.workspace.total_bytes,
        allocator_reserve_bytes=0,
        margin_bytes=final.total_bytes - final.peak_bytes,
        kv_per_token_bytes=shape.kv_bytes_per_token,
        kv_per_request_bytes=final.request_blocks * block_bytes(shape),
        kv_budget_bytes=final.pool_bytes,
        kv_in_use_bytes=kv_in_use,
        free_bytes=final.pool_bytes - kv_in_use,
        concurrency=at,
        allocated_peak_bytes=final.allocated_bytes,
        peak_bytes=final.peak_bytes,
        peak_phase="KV pool allocated at start",
    )
    return Capacity(
        weights=weights,
        kv_element_bytes=element,
        hf=None,
        vllm=None,
        concurrency=fit,
        zero_margin_concurrency=fit,
        largest_context=min(spec.max_positions, final.tokens),
        memory=memory,
        roofline=roof,
        costs=costs,
        capplan=final,
    )


def _vllm_capacity(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    options: VllmOptions | None,
    weights: WeightStorage,
    element: int,
    roof: Roofline,
    costs: StepCosts,
) -> Capacity:
    options = options or VllmOptions()
    version = vllm_version(options.version)
    default_tokens, default_seqs = default_scheduler_limits(version, gpu.total_bytes, gpu.name)
    budget = vllm_budget(
        spec,
        scheme,
        version,
        total_bytes=gpu.total_bytes,
        weights_bytes=weights.total_bytes,
        kv_element_bytes=element,
        request_tokens=workload.request_tokens,
        gpu_memory_utilization=options.gpu_memory_utilization,
        max_model_len=options.max_model_len,
        max_num_seqs=options.max_num_seqs or default_seqs,
        max_num_batched_tokens=options.max_num_batched_tokens or default_tokens,
        tp=workload.tp,
        sm_count=gpu.sm_count,
        enforce_eager=options.enforce_eager,
    )
    concurrency = budget.workload_concurrency if budget.starts else 0
    at = workload.concurrency or concurrency
    per_request = kv_bytes_for_context(spec, workload.request_tokens, element, workload.tp)
    kv_in_use = at * budget.request_pages * budget.page_bytes
    unrequested = budget.total_bytes - budget.requested_bytes
    # The shared terms: weights as vLLM's "Model loading took" (with the rotary cache), and the
    # profile peak with the CUDA-graph estimate, as vLLM 0.27+ logs its "peak activation".
    # vLLM allocates its whole KV pool at start: the peak does not grow with the requests.
    pool = max(0, budget.num_blocks * budget.page_bytes)
    weights_bytes = budget.weights_bytes + budget.rotary_cache_bytes
    activations = budget.activation_bytes + budget.cudagraph_bytes
    allocated = weights_bytes + activations + pool
    memory = MemoryTerms(
        total_bytes=budget.total_bytes,
        weights_bytes=weights_bytes,
        non_torch_bytes=budget.non_torch_bytes,
        activation_bytes=activations,
        allocator_reserve_bytes=0,
        margin_bytes=unrequested,
        kv_per_token_bytes=budget.kv_per_token_bytes,
        kv_per_request_bytes=per_request,
        kv_budget_bytes=budget.kv_budget_bytes,
        kv_in_use_bytes=kv_in_use,
        free_bytes=max(0, budget.kv_budget_bytes) - kv_in_use,
        concurrency=at,
        allocated_peak_bytes=allocated,
        peak_bytes=allocated + budget.non_torch_bytes,
        peak_phase="KV pool allocated at start",
    )
    return Capacity(
        weights=weights,
        kv_element_bytes=element,
        hf=None,
        vllm=budget,
        concurrency=concurrency,
        zero_margin_concurrency=concurrency,
        largest_context=min(budget.kv_cache_tokens, budget.max_model_len),
        memory=memory,
        roofline=roof,
        costs=costs,
    )


def max_tokens_for_concurrency(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    target: int,
    vllm_options: VllmOptions | None = None,
    costs: StepCosts | None = None,
) -> int | None:
    """Largest max_tokens at which `target` requests of this prompt run at once (None: none)."""

    def fits(max_tokens: int) -> bool:
        trial = replace(workload, max_tokens=max_tokens, concurrency=None)
        if trial.runtime == "hf":  # one replay at the target, not a search
            element = kv_dtype_bytes(trial.kv_dtype)
            weights = weight_storage(spec, scheme, tp=trial.tp)
            shape = hf_shape(gpu, spec, scheme, trial, weights, element)
            margin = int(gpu.total_bytes * trial.margin_fraction)
            return shape.peak(target).peak_bytes + margin <= gpu.total_bytes
        return capacity(gpu, spec, scheme, trial, vllm_options, costs).concurrency >= target

    limit = spec.max_positions
    if workload.runtime == "vllm" and vllm_options and vllm_options.max_model_len:
        limit = min(limit, vllm_options.max_model_len)
    low, high = 0, max(0, limit - workload.prompt_tokens)
    if high < 1 or not fits(1):
        return None
    low = 1
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low
