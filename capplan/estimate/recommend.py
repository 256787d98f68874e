"""Server settings from the capacity and the roofline, and what to change when nothing fits."""

from __future__ import annotations

import math
from dataclasses import replace

from capplan.catalog import loader
from capplan.errors import InputError
from capplan.estimate.architecture import ModelSpec
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


def recommended_concurrency(cap: Capacity) -> int:
    """What fits in memory, but no more than the batch at which decode turns compute bound."""
    return min(cap.concurrency, cap.roofline.compute_bound_batch)


def timing(cap: Capacity, workload: Workload) -> Timing:
    """Roofline figures at concurrency 1 and at the recommended concurrency."""
    roof = cap.roofline
    p, m = workload.prompt_tokens, workload.max_tokens
    c = max(1, recommended_concurrency(cap))
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
    )


def server_settings(
    cap: Capacity, workload: Workload, t: Timing, *, cpu: bool = False
) -> ServerSettings:
    """Settings for one server (one replica).

    A queued request should start within two service times, so the queue holds two rounds of
    `max_concurrent`; a longer queue only turns into timeouts. The per-client limit allows a
    minute's share of the replica's throughput in bursts and half of it sustained over an hour.
    """
    c = max(1, recommended_concurrency(cap))
    service_s = t.request_s_at_concurrency
    per_minute = c * 60 / service_s if service_s else 60.0
    share = per_minute / max(1, workload.clients)
    rate_limit = f"{max(1, math.floor(share))}/minute;{max(1, math.floor(share * 30))}/hour"
    if cap.vllm is not None:
        guard = cap.vllm.gpu_memory_utilization
    else:
        guard = round(1 - workload.margin_fraction, 3)
    request_timeout = math.ceil(max(10.0, 1.5 * service_s))
    return ServerSettings(
        max_concurrent=c,
        queue_size=2 * c,
        queue_timeout_s=math.ceil(max(5.0, 2 * service_s)),
        request_timeout_s=request_timeout,
        max_tokens_cap=workload.max_tokens,
        max_context=workload.request_tokens,
        rate_limit=rate_limit,
        vram_guard=guard,
        max_batch=c,
        batch_wait_ms=max(1, round(cap.roofline.decode_step_base_ms / 2)),
        # Each worker process loads its own copy of the weights: one worker per GPU; on CPU as
        # many as cores and RAM allow. One thread per in-flight generate() plus one for
        # /health and /stats.
        workers=workload.replicas if cpu else 1,
        threads=c + 1,
        drain_timeout_s=request_timeout,
    )


def _fit(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    options: VllmOptions | None,
) -> tuple[Capacity, str]:
    """Capacity with a change applied; under vLLM, when the change only misses because one
    max_model_len sequence does not fit, with the max_model_len vLLM would suggest."""
    cap = capacity(gpu, spec, scheme, workload, options)
    v = cap.vllm
    if v is None or v.starts or v.kv_cache_tokens < workload.request_tokens:
        return cap, ""
    shorter = replace(options or VllmOptions(), max_model_len=v.kv_cache_tokens)
    return capacity(gpu, spec, scheme, workload, shorter), f" --max-model-len {v.kv_cache_tokens}"


def alternatives(
    gpu: GpuSpec,
    spec: ModelSpec,
    scheme: QuantScheme,
    workload: Workload,
    vllm_options: VllmOptions | None,
) -> list[Alternative]:
    """What would fit, each with its numbers: smaller quantization, shorter max_tokens,
    a catalog GPU, more GPUs."""
    found: list[Alternative] = []
    current = capacity(gpu, spec, scheme, workload, vllm_options)
    for name in SMALLER_SCHEMES:
        if name == "fp8" and not gpu.fp8:
            continue
        other = parse_quant(name, native_dtype=spec.dtype)
        cap, extra = _fit(gpu, spec, other, workload, vllm_options)
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
    shorter = max_tokens_for_concurrency(gpu, spec, scheme, workload, 1, vllm_options)
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
