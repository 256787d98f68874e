"""Service timing for the emulated backend: the same roofline and hf budget as `estimate`."""

from __future__ import annotations

from dataclasses import dataclass

from capplan.estimate.gpu_spec import GpuSpec, resolve_gpu
from capplan.estimate.kv_cache import (
    kv_bytes_per_token,
    kv_dtype_bytes,
    max_tokens_in_budget,
    resolve_kv_dtype,
)
from capplan.estimate.memory_hf import hf_budget
from capplan.estimate.model_spec import resolve_model
from capplan.estimate.quantization import weight_storage
from capplan.estimate.roofline import Roofline, attention_width, matmul_params

# The prompt length whose prefill activations are reserved when no workload is given.
REFERENCE_PROMPT_TOKENS = 512


@dataclass(frozen=True)
class ServiceTiming:
    """Per-step costs of serving `model` on `gpu` (hf runtime, one GPU, batched decode)."""

    prefill_ms_per_token: float
    decode_step_base_ms: float  # weights read once per step
    decode_step_ms_per_kv_token: float  # extra per KV token held by the batch
    kv_bytes_per_token: int
    kv_budget_bytes: int  # KV memory available under the hf runtime
    max_context: int  # largest single-request context (prompt + output) that fits
    gpu: str = ""
    model: str = ""
    quant: str = ""
    kv_dtype: str = ""
    weights_bytes: int = 0
    decode_compute_ms_per_sequence: float = 0.0  # matmul time each sequence adds to a step

    def decode_step_ms(self, total_kv_tokens: int, batch: int = 1) -> float:
        """One batched decode step while the batch holds `total_kv_tokens` KV tokens; with
        `batch` given, never faster than the batch's matmul FLOPs allow."""
        memory = self.decode_step_base_ms + total_kv_tokens * self.decode_step_ms_per_kv_token
        return max(memory, batch * self.decode_compute_ms_per_sequence)

    def prefill_ms(self, tokens: int) -> float:
        """Prefill of a `tokens`-token prompt (never faster than one read of the weights)."""
        return max(tokens * self.prefill_ms_per_token, self.decode_step_base_ms)


def service_timing(
    gpu: str | GpuSpec,
    model: str,
    *,
    quant: str | None = None,
    kv_dtype: str | None = None,
) -> ServiceTiming:
    """Timing and KV budget for `model` (catalog id, suffix or config path) on `gpu`.

    Unknown ids raise `InputError`.
    """
    gpu_spec = gpu if isinstance(gpu, GpuSpec) else resolve_gpu(gpu)
    resolved = resolve_model(model, quant=quant)
    spec, scheme = resolved.spec, resolved.quant
    kv_name = resolve_kv_dtype(kv_dtype, scheme.name)
    element = kv_dtype_bytes(kv_name)
    weights = weight_storage(spec, scheme).total_bytes
    roof = Roofline(
        weights_bytes=weights,
        matmul_params=matmul_params(spec),
        attention_width=attention_width(spec),
        kv_bytes_per_token=kv_bytes_per_token(spec, element),
        bandwidth_bytes_s=gpu_spec.bandwidth_bytes_s,
        tflops=gpu_spec.tflops_fp16,
        decode_slowdown=scheme.decode_slowdown,
        prefill_slowdown=scheme.prefill_slowdown,
    )
    budget = hf_budget(
        spec,
        scheme,
        total_bytes=gpu_spec.total_bytes,
        weights_bytes=weights,
        kv_element_bytes=element,
        prompt_tokens=REFERENCE_PROMPT_TOKENS,
        max_tokens=0,
    )
    kv_budget = max(0, budget.kv_budget_bytes)
    context = min(spec.max_positions, max_tokens_in_budget(spec, kv_budget, element))
    return ServiceTiming(
        prefill_ms_per_token=roof.prefill_ms_per_token,
        decode_step_base_ms=roof.decode_step_base_ms,
        decode_step_ms_per_kv_token=roof.decode_ms_per_kv_token,
        kv_bytes_per_token=roof.kv_bytes_per_token,
        kv_budget_bytes=kv_budget,
        max_context=context,
        gpu=gpu_spec.id,
        model=spec.id,
        quant=scheme.name,
        kv_dtype=kv_name,
        weights_bytes=weights,
        decode_compute_ms_per_sequence=roof.decode_compute_ms_per_sequence,
    )
