"""Server settings from the capacity and the roofline, and what to change when nothing fits."""

from __future__ import annotations

import math
from dataclasses import replace

from capplan.catalog import loader
from capplan.errors import InputError
from capplan.estimate.architecture import ModelSpec
from capplan.estimate.calibration import StepCosts
from capplan.estimate.capacity import (
    Capacity,
    VllmOptions,
    capacity,
    check_parallelism,
    max_tokens_for_concurrency,
)
from capplan.estimate.gpu_spec import GpuSpec, from_catalog
from capplan.estimate.quantization import QuantScheme, parse_quant
from capplan.estimate.result import Alternative, Timing, Workload
from capplan.settings import ServerSettings
from capplan.units import format_bytes

# Schemes to try, smallest weights last, when the chosen one does not fit.
SMALLER_SCHEMES = ("fp8", "int8", "awq", "nf4")


def recommended_concurrency(cap: Capacity) -> tuple[int, str]:
    """What fits in memory, but no more than the batch at which decode turns compute bound;
    with the bound that sets it, in one sentence."""
    fit, compute = cap.concurrency, cap.roofline.compute_bound_batch
    if fit < 1:
        return 0, "memory: not one request fits"
    measured = cap.costs.largest_batch
    if measured is not None and measured < min(fit, compute):
        return measured, (
            f"calibration: measured up to batch {measured}, and the step time past it would be "
            f"extrapolated (memory holds at least {fit}); calibrate with a larger --concurrency "
            "to plan higher"
        )
    if compute <= fit:
        return compute, (
            f"compute: past {compute} requests the per-sequence costs outweigh the fixed ones, "
            f"so more adds latency faster than throughput (memory holds at least {fit})"
        )
    if cap.hf is not None and cap.hf.alloc_conf == "default":
        oom = cap.zero_margin_concurrency
        return fit, (
            f"memory as the GPU sees it: at {fit + 1} the process (CUDA context + the caching "
            f"allocator's reserved memory) would exceed total minus the margin; allocated memory "
            f"alone reaches out-of-memory only past {oom}, but in between generate() survives "
            "only by freeing its cache and retrying cudaMalloc (slower, not measured)"
        )
    if cap.hf is not None:
        return fit, f"memory: at {fit + 1} requests the process would exceed total minus the margin"
    if cap.capplan is not None:
        return fit, (
            f"memory: {fit} reservations of prompt + max_tokens fill the KV pool capplan serve "
            "allocates at start (16-token blocks)"
        )
    return fit, "memory: vLLM's KV pool (16-token pages), capped by max_num_seqs"


def timing(cap: Capacity, workload: Workload) -> Timing:
    """Step-model figures at concurrency 1 and at --concurrency N (else the recommended one)."""
    roof = cap.roofline
    p, m = workload.prompt_tokens, workload.max_tokens
    c = max(1, workload.concurrency or recommended_concurrency(cap)[0])
    mean_context = p + max(m - 1, 0) // 2
    step_c1 = roof.decode_step_ms(mean_context)
    step_c = roof.decode_step_ms(c * mean_context, c)
    request_c1 = roof.request_ms(p, m, 1) / 1e3
    request_c = roof.request_ms(p, m, c) / 1e3
    return Timing(
        prefill_ms=roof.prefill_ms(p),
        decode_ms_per_token_c1=step_c1,
        decode_ms_per_token_at_concurrency=step_c,
        concurrency=c,
        output_tokens_per_s_c1=1e3 / step_c1 if step_c1 else 0.0,
        output_tokens_per_s_at_concurrency=c * 1e3 / step_c if step_c else 0.0,
        request_s_c1=request_c1,
        request_s_at_concurrency=request_c,
        requests_per_min=workload.replicas * c * 60 / request_c if request_c else 0.0,
        bandwidth_efficiency=roof.bandwidth_efficiency,
        compute_efficiency=roof.compute_efficiency,
        decode_slowdown=roof.decode_slowdown,
        floor_ms=roof.floor_ms,
        host_ms_per_sequence=roof.host_ms_per_sequence,
        overhead_ms=roof.overhead_ms,
        decode_bound=roof.decode_bound(c * mean_context, c),
        calibrated=cap.costs.calibrated,
        basis=cap.costs.basis,
    )


# A request's generation may take this many times the estimated service time before the server
# gives up (504): the estimate is a median; the tail, a loaded host and a longer prompt need room.
TIMEOUT_MULTIPLE = 3.0
# Per-client rate limits round to two significant figures; past this, no client can be told
# apart from the server's own capacity, and none is emitted.
MAX_RATE_PER_MINUTE = 10_000


def server_settings(
    cap: Capacity, workload: Workload, t: Timing, *, model_context: int, cpu: bool = False
) -> ServerSettings:
    """Settings for one server (one replica).

    Timeouts come from the service time at the recommended concurrency with a stated multiple:
    a request may run TIMEOUT_MULTIPLE x its estimate before a 504, and wait in the queue while
    two rounds of max_concurrent requests finish, times the same multiple. The queue holds two
    rounds (a longer one only turns into timeouts). `max_context` is the model's (or runtime's)
    own limit: a chat template lengthens every prompt, so prompt + max_tokens would reject them.
    The per-client limit allows a minute's share of the replica's throughput and half of it
    sustained over an hour.
    """
    c = max(1, recommended_concurrency(cap)[0])
    service_s = t.request_s_at_concurrency
    request_timeout = max(10, math.ceil(TIMEOUT_MULTIPLE * service_s))
    queue_timeout = max(5, math.ceil(TIMEOUT_MULTIPLE * 2 * service_s))
    per_minute = c * 60 / service_s if service_s else float(MAX_RATE_PER_MINUTE)
    share = per_minute / max(1, workload.clients)
    rate_limit = None
    if share < MAX_RATE_PER_MINUTE:
        minute = _two_figures(max(1.0, share))
        rate_limit = f"{minute}/minute;{_two_figures(max(1.0, share * 30))}/hour"
    guard = (
        cap.vllm.gpu_memory_utilization
        if cap.vllm is not None
        else round(1 - workload.margin_fraction, 3)
    )
    return ServerSettings(
        max_concurrent=c,
        queue_size=2 * c,
        queue_timeout_s=queue_timeout,
        request_timeout_s=request_timeout,
        max_tokens_cap=workload.max_tokens,
        max_context=model_context,
        rate_limit=rate_limit,
        vram_guard=guard,
        # capplan: the batch its pool's workspace was sized for (the recommended one)
        max_batch=cap.capplan.limits.max_batch if cap.capplan is not None else c,
        batch_wait_ms=max(1, round(max(t.floor_ms, cap.roofline.decode_step_base_ms) / 2)),
        # Each worker process loads its own copy of the weights: one worker per GPU; on CPU as
        # many as cores and RAM allow. The reference server's workers are async: generation
        # runs on the engine's own thread, so more threads only add switching.
        workers=workload.replicas if cpu else 1,
        threads=1,
        drain_timeout_s=request_timeout,
        # --runtime capplan: the pool the estimate planned, allocated to the byte by the server
        kv_cache_memory=cap.capplan.pool_bytes if cap.capplan is not None else None,
        prefill_chunk_tokens=(
            cap.capplan.limits.prefill_chunk_tokens if cap.capplan is not None else None
        ),
    )


def _two_figures(value: float) -> int:
    """10,478 -> 10,000; 184 -> 180; 7.6 -> 7 (rounded down: a limit errs low)."""
    if value < 10:
        return max(1, math.floor(value))
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return int(math.floor(value / scale) * scale)


def _fit(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    options: VllmOptions | None,
    costs: StepCosts | None = None,
) -> tuple[Capacity, str]:
    """Capacity with a change applied; under vLLM, when the change only misses because one
    max_model_len sequence does not fit, with the max_model_len vLLM would suggest."""
    cap = capacity(gpu, spec, scheme, workload, options, costs)
    v = cap.vllm
    if v is None or v.starts or v.kv_cache_tokens < workload.request_tokens:
        return cap, ""
    shorter = replace(options or VllmOptions(), max_model_len=v.kv_cache_tokens)
    extra = f" --max-model-len {v.kv_cache_tokens}"
    return capacity(gpu, spec, scheme, workload, shorter, costs), extra


def alternatives(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    vllm_options: VllmOptions | None,
    costs: StepCosts | None = None,
) -> list[Alternative]:
    """What would fit, each with its numbers: smaller quantization, shorter max_tokens,
    a catalog GPU, more GPUs."""
    found: list[Alternative] = []
    current = capacity(gpu, spec, scheme, workload, vllm_options, costs)
    for name in SMALLER_SCHEMES:
        if name == "fp8" and not gpu.fp8:
            continue
        other = parse_quant(name, native_dtype=spec.dtype)
        cap, extra = _fit(gpu, spec, other, workload, vllm_options, costs)
        if cap.weights.total_bytes < current.weights.total_bytes and cap.concurrency >= 1:
            # Every smaller scheme that fits: they trade memory against decode speed.
            found.append(
                Alternative(
                    "quantization",
                    f"--quant {name}{extra}",
                    cap.concurrency,
                    f"{other.label}: weights {format_bytes(cap.weights.total_bytes)}, "
                    f"{cap.concurrency} concurrent",
                )
            )
    shorter = max_tokens_for_concurrency(gpu, spec, scheme, workload, 1, vllm_options, costs)
    if shorter is not None and shorter < workload.max_tokens:
        found.append(
            Alternative(
                "max_tokens",
                f"--max-tokens {shorter}",
                1,
                f"one request of {workload.prompt_tokens}+{shorter} tokens fits",
            )
        )
    if current.vllm is not None:
        found += _vllm_knobs(gpu, spec, scheme, workload, current, vllm_options or VllmOptions())
    found += _bigger_gpus(gpu, spec, scheme, workload, vllm_options)
    if gpu.kind != "cpu":
        found += _more_gpus(gpu, spec, scheme, workload, vllm_options)
    return found


def _vllm_knobs(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    current: Capacity,
    options: VllmOptions,
) -> list[Alternative]:
    """vLLM only: a max_model_len the KV cache can hold, or a higher memory utilization."""
    found = []
    v = current.vllm
    if v is not None and not v.starts and v.kv_cache_tokens >= workload.request_tokens:
        length = v.kv_cache_tokens
        cap = capacity(gpu, spec, scheme, workload, replace(options, max_model_len=length))
        found.append(
            Alternative(
                "max_model_len",
                f"--max-model-len {length}",
                cap.concurrency,
                f"the KV cache holds {length} tokens",
            )
        )
    for utilization in (0.92, 0.95):
        if v is None or utilization <= v.gpu_memory_utilization:  # the release's own default
            continue
        trial = replace(options, gpu_memory_utilization=utilization)
        cap = capacity(gpu, spec, scheme, workload, trial)
        if cap.concurrency >= 1:
            found.append(
                Alternative(
                    "gpu_memory_utilization",
                    f"--gpu-memory-utilization {utilization}",
                    cap.concurrency,
                    f"vLLM takes {utilization:.0%} of memory (less headroom for other processes)",
                )
            )
            break
    return found


def _bigger_gpus(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    vllm_options: VllmOptions | None,
) -> list[Alternative]:
    options = []
    for entry in sorted(loader.gpus().values(), key=lambda e: (e.total_bytes, -e.bandwidth_gbs)):
        if entry.total_bytes <= gpu.total_bytes:
            continue
        cap, extra = _fit(from_catalog(entry), spec, scheme, workload, vllm_options)
        if cap.concurrency >= 1:
            options.append(
                Alternative(
                    "gpu",
                    f"--gpu {entry.id}{extra}",
                    cap.concurrency,
                    f"{entry.name} ({format_bytes(entry.total_bytes)}): "
                    f"{cap.concurrency} concurrent",
                )
            )
        if len(options) == 2:
            break
    return options


def _more_gpus(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    vllm_options: VllmOptions | None,
) -> list[Alternative]:
    for tp in (2, 4, 8):
        if tp <= workload.tp:
            continue
        try:
            check_parallelism(spec, tp, tp)
        except InputError:
            continue
        trial = replace(workload, gpus=tp, tp=tp)
        cap, extra = _fit(gpu, spec, scheme, trial, vllm_options)
        if cap.concurrency >= 1:
            return [
                Alternative(
                    "gpus",
                    f"--gpus {tp} --tp {tp}{extra}",
                    cap.concurrency,
                    f"{tp} x {gpu.name}, weights {format_bytes(cap.weights.total_bytes)} per "
                    f"GPU: {cap.concurrency} concurrent",
                )
            ]
    return []
