"""`estimate()`: put the parts together for one GPU, model and workload."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from capplan.catalog import loader
from capplan.catalog.vllm_versions import vllm_version
from capplan.errors import InputError
from capplan.estimate.allocator import ALLOC_CONFS
from capplan.estimate.architecture import ModelSpec, parameter_count, parameters_by_role
from capplan.estimate.calibration import CalibrationProfile, StepCosts, check_matches, step_costs
from capplan.estimate.capacity import (
    RUNTIMES,
    Capacity,
    VllmOptions,
    capacity,
    check_parallelism,
    max_tokens_for_concurrency,
)
from capplan.estimate.gpu_spec import GpuSpec
from capplan.estimate.kv_cache import resolve_kv_dtype
from capplan.estimate.memory_capplan import capplan_assumptions
from capplan.estimate.memory_hf import CPU_PROCESS_BYTES, SAFETY_MARGIN_FRACTION
from capplan.estimate.memory_vllm import vllm_assumptions
from capplan.estimate.model_spec import ResolvedModel
from capplan.estimate.quantization import QuantScheme
from capplan.estimate.recommend import (
    alternatives,
    recommended_concurrency,
    server_settings,
    timing,
)
from capplan.estimate.result import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    SCHEMA_VERSION,
    EstimateResult,
    Workload,
)
from capplan.units import format_bytes

DEFAULT_MARGIN = SAFETY_MARGIN_FRACTION
# CPU inference: at most one worker per this many cores (each worker is a full model copy).
CORES_PER_CPU_WORKER = 8


@dataclass(frozen=True)
class EstimateRequest:
    gpu: GpuSpec
    model: ResolvedModel
    prompt_tokens: int | None = None
    max_tokens: int | None = None
    runtime: str = "hf"
    kv_dtype: str | None = None
    gpus: int = 1
    tp: int = 1
    margin: float = DEFAULT_MARGIN
    target_concurrency: int | None = None
    clients: int = 1
    vllm: VllmOptions = field(default_factory=VllmOptions)
    concurrency: int | None = None  # evaluate every term and timing at N requests
    alloc_conf: str = "default"  # hf: PYTORCH_CUDA_ALLOC_CONF (default | expandable)
    calibration: CalibrationProfile | None = None


def _workload(request: EstimateRequest) -> Workload:
    if request.runtime not in RUNTIMES:
        raise InputError(f"unknown --runtime '{request.runtime}'; choose hf, vllm or capplan")
    prompt = DEFAULT_PROMPT_TOKENS if request.prompt_tokens is None else request.prompt_tokens
    output = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
    if prompt < 1 or output < 1:
        raise InputError("--prompt-tokens and --max-tokens must be at least 1")
    if not 0 <= request.margin < 0.5:
        raise InputError(f"--margin {request.margin} must be a fraction in [0, 0.5), e.g. 0.03")
    _check_vllm_options(request, prompt + output)
    if request.target_concurrency is not None and request.target_concurrency < 1:
        raise InputError("--target-concurrency must be at least 1")
    if request.clients < 1:
        raise InputError("--clients must be at least 1")
    if request.concurrency is not None and request.concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    if request.alloc_conf not in ALLOC_CONFS:
        raise InputError(
            f"unknown --alloc-conf '{request.alloc_conf}'; choose default or expandable"
        )
    if request.alloc_conf != "default" and request.runtime != "hf":
        raise InputError("--alloc-conf applies to --runtime hf (vLLM preallocates its KV pool)")
    spec = request.model.spec
    check_parallelism(spec, request.gpus, request.tp)
    if request.gpu.kind == "cpu" and (request.runtime == "vllm" or request.gpus > 1):
        raise InputError(
            "--gpu cpu plans transformers on CPU: use --runtime hf or capplan and --gpus 1"
        )
    if prompt + output > spec.max_positions:
        raise InputError(
            f"--prompt-tokens + --max-tokens = {prompt + output} exceeds {spec.id}'s "
            f"{spec.max_positions} positions; lower --max-tokens"
        )
    return Workload(
        prompt_tokens=prompt,
        max_tokens=output,
        prompt_tokens_is_default=request.prompt_tokens is None,
        max_tokens_is_default=request.max_tokens is None,
        runtime=request.runtime,
        kv_dtype=resolve_kv_dtype(request.kv_dtype, request.model.quant.name),
        gpus=request.gpus,
        tp=request.tp,
        margin_fraction=request.margin,
        target_concurrency=request.target_concurrency,
        clients=request.clients,
        concurrency=request.concurrency,
        alloc_conf=request.alloc_conf,
    )


def _check_vllm_options(request: EstimateRequest, request_tokens: int) -> None:
    """vLLM's own refusals, as one-line errors: a max_model_len beyond the model's positions
    (vLLM raises unless VLLM_ALLOW_LONG_MAX_MODEL_LEN), and requests longer than it (vLLM
    answers them 400)."""
    v, spec = request.vllm, request.model.spec
    utilization = v.gpu_memory_utilization
    if utilization is not None and not 0 < utilization <= 1:
        raise InputError("--gpu-memory-utilization must be in (0, 1], e.g. 0.92")
    vllm_version(v.version)  # an unknown or malformed release is an input error
    for flag, value in (
        ("--max-model-len", v.max_model_len),
        ("--max-num-seqs", v.max_num_seqs),
        ("--max-num-batched-tokens", v.max_num_batched_tokens),
    ):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    given = {
        "--max-model-len": v.max_model_len is not None,
        "--max-num-seqs": v.max_num_seqs is not None,
        "--max-num-batched-tokens": v.max_num_batched_tokens is not None,
        "--gpu-memory-utilization": utilization is not None,
        "--vllm-version": v.version is not None,
        "--enforce-eager": v.enforce_eager,
    }
    named = [flag for flag, is_given in given.items() if is_given]
    if request.runtime == "capplan":  # capplan serve sizes its KV pool the same way
        named = [flag for flag in named if flag != "--gpu-memory-utilization"]
    if request.runtime != "vllm" and named:
        verb = "applies" if len(named) == 1 else "apply"
        raise InputError(
            f"{' and '.join(named)} {verb} to --runtime vllm only; add --runtime vllm or "
            f"drop {'it' if len(named) == 1 else 'them'}"
        )
    if v.max_model_len is None:
        return
    if v.max_model_len > spec.max_positions:
        raise InputError(
            f"--max-model-len {v.max_model_len} exceeds {spec.id}'s {spec.max_positions} "
            "positions (vLLM refuses it); lower --max-model-len"
        )
    if request.runtime == "vllm" and request_tokens > v.max_model_len:
        raise InputError(
            f"--prompt-tokens + --max-tokens = {request_tokens} exceeds --max-model-len "
            f"{v.max_model_len} (vLLM rejects such requests); raise --max-model-len or lower "
            "--max-tokens"
        )


def estimate(request: EstimateRequest) -> EstimateResult:
    """Memory, concurrency, timing and settings for one deployment."""
    workload = _workload(request)
    gpu, spec, scheme = request.gpu, request.model.spec, request.model.quant
    if gpu.bandwidth_bytes_s <= 0:
        raise InputError(f"no memory bandwidth known for {gpu.name}; add --bandwidth GB/s")
    costs = step_costs(request.runtime, device_kind=gpu.kind, calibration=request.calibration)
    if gpu.kind == "cpu":
        gpu, workload = _cpu_workers(gpu, spec, scheme, workload, costs)
    cap = capacity(gpu, spec, scheme, workload, request.vllm, costs)
    t = timing(cap, workload)
    fits = cap.concurrency >= 1
    recommended, bound = recommended_concurrency(cap)
    target = None
    if workload.target_concurrency is not None:
        target = max_tokens_for_concurrency(
            gpu, spec, scheme, workload, workload.target_concurrency, request.vllm, costs
        )
    return EstimateResult(
        schema_version=SCHEMA_VERSION,
        gpu=gpu,
        model=spec,
        quant=scheme,
        quant_source=request.model.quant_source,
        params=parameter_count(spec),
        params_by_role=parameters_by_role(spec),
        weights=cap.weights,
        workload=workload,
        memory=cap.memory,
        hf=cap.hf,
        vllm=cap.vllm,
        capplan=cap.capplan,
        fits=fits,
        verdict=_verdict(cap, workload),
        concurrency=recommended,
        concurrency_bound=bound,
        total_concurrency=recommended * workload.replicas,
        zero_margin_concurrency=cap.zero_margin_concurrency,
        compute_bound_batch=cap.roofline.compute_bound_batch,
        largest_context=cap.largest_context,
        target_max_tokens=target,
        timing=t,
        settings=server_settings(
            cap, workload, t, model_context=_context_limit(request), cpu=gpu.kind == "cpu"
        ),
        alternatives=(
            [] if fits else alternatives(gpu, spec, scheme, workload, request.vllm, costs)
        ),
        assumptions=_assumptions(workload, cap, request),
        notes=_notes(cap, request),
    )


def _context_limit(request: EstimateRequest) -> int:
    """The longest prompt + output the runtime serves: vLLM's max_model_len, else the model's
    positions (a chat template lengthens prompts, so the request's own size is no limit)."""
    positions = request.model.spec.max_positions
    if request.runtime == "vllm" and request.vllm.max_model_len:
        return min(positions, request.vllm.max_model_len)
    return positions


def _cpu_workers(
    cpu: GpuSpec, spec: ModelSpec, scheme: QuantScheme, workload: Workload, costs: StepCosts
) -> tuple[GpuSpec, Workload]:
    """CPU workers by cores and RAM: the most (up to one per 8 cores) whose own copy of the
    weights still leaves room for a request. Each worker gets its share of RAM, bandwidth and
    FLOPS, and is planned as one replica."""
    most = max(1, cpu.cores // CORES_PER_CPU_WORKER)
    for workers in range(most, 0, -1):
        share = replace(
            cpu,
            total_bytes=cpu.total_bytes // workers,
            bandwidth_bytes_s=cpu.bandwidth_bytes_s / workers,
            tflops_fp16=cpu.tflops_fp16 / workers,
        )
        trial = replace(workload, gpus=workers, tp=1)
        if workers == 1 or capacity(share, spec, scheme, trial, costs=costs).concurrency >= 1:
            return share, trial
    raise AssertionError("unreachable")


def _verdict(cap: Capacity, w: Workload) -> str:
    m = cap.memory
    shape = f"{w.prompt_tokens}+{w.max_tokens} tokens"
    per_gpu = " per replica" if w.replicas > 1 else ""
    if m.weights_bytes + m.non_torch_bytes >= m.total_bytes:
        return (
            f"Does not fit: the weights alone ({format_bytes(m.weights_bytes)}) plus the CUDA "
            f"context exceed the GPU's {format_bytes(m.total_bytes)}."
        )
    if cap.vllm is not None and cap.vllm.kv_cache_tokens == 0:
        v = cap.vllm
        return (
            f"Does not fit: vLLM's share (total x {v.gpu_memory_utilization} = "
            f"{format_bytes(v.requested_bytes)}) minus weights, profile activations and "
            f"non-torch memory leaves nothing for the KV cache."
        )
    if cap.vllm is not None and not cap.vllm.starts:
        return (
            f"Does not fit: vLLM would refuse to start: its KV cache holds "
            f"{cap.vllm.kv_cache_tokens} tokens, less than max_model_len "
            f"{cap.vllm.max_model_len} (lower --max-model-len)."
        )
    if cap.capplan is not None and cap.concurrency < 1:
        b = cap.capplan
        share = (
            f"gpu_memory_utilization {b.gpu_memory_utilization} of total"
            if b.gpu_memory_utilization
            else "the RAM"
        )
        return (
            f"Does not fit: {share} ({format_bytes(b.requested_bytes)}) minus weights, "
            f"{'CUDA context' if b.gpu_memory_utilization else 'the process'} and the engine's "
            f"workspace leaves a KV pool of {format_bytes(b.pool_bytes)}, but one request of "
            f"{shape} reserves {format_bytes(m.kv_per_request_bytes)} (raise "
            "--gpu-memory-utilization, or lower --max-tokens)."
        )
    if cap.concurrency < 1:
        return (
            f"Does not fit: {format_bytes(max(0, m.kv_budget_bytes))} is left for KV after "
            f"weights, CUDA context, activations, allocator reserve and margin, but one request of "
            f"{shape} needs {format_bytes(m.kv_per_request_bytes)}."
        )
    recommended, bound = recommended_concurrency(cap)
    if bound.startswith("compute"):
        why = (
            f"bounded by compute: more adds latency, not throughput; out-of-memory past "
            f"{cap.zero_margin_concurrency}"
        )
    elif bound.startswith("calibration"):
        why = f"bounded by the calibration's largest measured batch; {bound.split(';')[-1].strip()}"
    elif cap.vllm is not None:
        why = f"inside vLLM's gpu_memory_utilization {cap.vllm.gpu_memory_utilization}"
    elif cap.capplan is not None:
        why = (
            f"their reservations in the KV pool capplan serve allocates at start, "
            f"{format_bytes(cap.capplan.pool_bytes)}"
        )
    else:
        why = (
            f"with a {w.margin_fraction:.0%} safety margin on the device peak; out-of-memory "
            f"past {cap.zero_margin_concurrency}"
        )
    noun = "request" if recommended == 1 else "requests"
    return f"Fits: {recommended} concurrent {noun} of {shape}{per_gpu} ({why})."


def _assumptions(w: Workload, cap: Capacity, request: EstimateRequest) -> list[str]:
    roof = cap.roofline
    items = [
        f"prompt {w.prompt_tokens} tokens"
        + (" (default)" if w.prompt_tokens_is_default else "")
        + f", max_tokens {w.max_tokens}"
        + (" (default)" if w.max_tokens_is_default else "")
        + "; every request is assumed to use all of max_tokens",
        f"KV cache dtype {w.kv_dtype}"
        + (" (auto: the compute dtype)" if request.kv_dtype in (None, "auto") else ""),
    ]
    if request.gpu.kind == "cpu":
        threads = max(1, request.gpu.cores // w.replicas)
        items += [
            f"CPU inference: {w.replicas} worker(s), each with its own copy of the weights and "
            f"{threads} torch threads (OMP_NUM_THREADS={threads}); process overhead "
            f"{format_bytes(CPU_PROCESS_BYTES)} per worker; RAM, bandwidth and FLOPS split "
            "evenly between workers",
        ]
    elif cap.hf is not None:
        conf = (
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (modelled, not yet measured on a GPU)"
            if w.alloc_conf == "expandable"
            else "the default caching allocator (cached blocks the growing cache leaves "
            "behind counted; measured on an H200)"
        )
        items += [
            f"runtime hf: one generate() over a batch of the concurrent requests with the "
            f"default DynamicCache; CUDA context and workspaces "
            f"{format_bytes(cap.hf.cuda_context_bytes)}; {conf}; safety margin "
            f"{w.margin_fraction:.0%} of total memory",
        ]
    if cap.vllm is not None:
        items += vllm_assumptions(cap.vllm)
    if cap.capplan is not None:
        items += capplan_assumptions(cap.capplan)
    items.append(
        f"a step takes the largest of: all weights plus the batch's KV read at "
        f"{roof.bandwidth_efficiency:.0%} of {request.gpu.bandwidth_bytes_s / 1e9:.0f} GB/s; "
        f"~2 x params FLOPs per token at {roof.compute_efficiency:.3g} of "
        f"{request.gpu.tflops_fp16:g} TFLOPS; the runtime's floor {roof.floor_ms:.3g} ms "
        f"({cap.costs.floor_ms_per_layer:g} ms x {request.model.spec.layers} layers)"
    )
    items.append(f"timing {cap.costs.basis}")
    if not cap.costs.calibrated:
        entry = loader.runtime(request.runtime)
        source = entry.cpu_floor_source if request.gpu.kind == "cpu" else entry.gpu_floor_source
        items.append(f"{request.runtime} floor: {source}; efficiencies: {entry.compute_source}")
    if roof.decode_slowdown != 1.0:
        items.append(
            f"{request.model.quant.label} kernels: decode x{roof.decode_slowdown:g} slower and "
            f"prefill x{roof.prefill_slowdown:g} slower than a 16-bit bandwidth-bound step"
        )
    if w.tp > 1:
        items.append(f"tensor parallel {w.tp}: weights and KV heads split per rank; no comms time")
    return items


def _notes(cap: Capacity, request: EstimateRequest) -> list[str]:
    spec, scheme, gpu = request.model.spec, request.model.quant, request.gpu
    weights = cap.weights
    notes = []
    if request.calibration is not None:
        notes += check_matches(request.calibration, request.runtime, gpu.id)
    if weights.naive_bytes and weights.total_bytes > weights.naive_bytes * 1.02:
        short = 1 - weights.naive_bytes / weights.total_bytes
        notes.append(
            f"params x {scheme.weight_bits / 8:g} byte = {format_bytes(weights.naive_bytes)} is "
            f"{short:.0%} below the real {format_bytes(weights.total_bytes)}: "
            f"{format_bytes(weights.unquantized_bytes)} "
            f"stays 16-bit (embeddings, lm_head, norms) and scales/zeros add "
            f"{format_bytes(weights.scale_bytes)}"
        )
    if spec.published_params is not None and spec.published_params != parameter_count(spec):
        notes.append(
            f"parameter count {parameter_count(spec):,} differs from the published "
            f"{spec.published_params:,}"
        )
    if spec.has_sliding_window:
        notes.append("sliding-window layers hold at most their window of KV")
    if scheme.name == "bf16" and not gpu.bf16:
        notes.append(f"{gpu.name} has no bf16: the model runs in fp16 (same bytes)")
    if scheme.name == "fp8" and not gpu.fp8:
        notes.append(f"{gpu.name} has no fp8 tensor cores: fp8 runs as weight-only dequantization")
    for field_note in (*spec.check, *(f"GPU {c}" for c in gpu.check)):
        notes.append(f"catalog value from a secondary source: {field_note}")
    if gpu.detected_count > 1:
        notes.append(f"NVML found {gpu.detected_count} such GPUs; pass --gpus to use them")
    return notes
