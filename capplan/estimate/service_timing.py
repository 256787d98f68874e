"""Service timing for the emulated backend, validate and plan: the estimator's own step model.

Every figure comes from `capacity.step_model` (roofline + the runtime's floor, calibrated or the
defaults) and the hf budget, so the emulated backend, `validate` and `plan` can never disagree
with `capplan estimate` about how long a step takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from capplan.estimate.calibration import CalibrationProfile, step_costs
from capplan.estimate.capacity import capacity
from capplan.estimate.gpu_spec import GpuSpec, resolve_gpu
from capplan.estimate.kv_cache import kv_dtype_bytes, max_tokens_in_budget, resolve_kv_dtype
from capplan.estimate.model_spec import resolve_model
from capplan.estimate.result import Workload
from capplan.estimate.roofline import Roofline

# The prompt length whose prefill activations are reserved when no workload is given.
REFERENCE_PROMPT_TOKENS = 512


@dataclass(frozen=True)
class ServiceTiming:
    """Per-step costs of serving `model` on `gpu` (one GPU, batched decode), and its KV room."""

    roofline: Roofline
    kv_budget_bytes: int  # KV memory available to one request under the runtime's budget
    max_context: int  # largest single-request context (prompt + output) that fits
    gpu: str = ""
    model: str = ""
    quant: str = ""
    kv_dtype: str = ""
    calibrated: bool = False
    basis: str = ""

    @property
    def prefill_ms_per_token(self) -> float:
        return self.roofline.prefill_ms_per_token

    @property
    def decode_step_base_ms(self) -> float:
        """Weights read once per step."""
        return self.roofline.decode_step_base_ms

    @property
    def decode_step_ms_per_kv_token(self) -> float:
        return self.roofline.decode_ms_per_kv_token

    @property
    def decode_compute_ms_per_sequence(self) -> float:
        return self.roofline.decode_compute_ms_per_sequence

    @property
    def kv_bytes_per_token(self) -> int:
        return self.roofline.kv_bytes_per_token

    @property
    def weights_bytes(self) -> int:
        return self.roofline.weights_bytes

    @property
    def floor_ms(self) -> float:
        return self.roofline.floor_ms

    @property
    def host_ms_per_sequence(self) -> float:
        return self.roofline.host_ms_per_sequence

    @property
    def overhead_ms(self) -> float:
        return self.roofline.overhead_ms

    def decode_step_ms(self, total_kv_tokens: int, batch: int = 1) -> float:
        """One batched decode step while the batch holds `total_kv_tokens` KV tokens."""
        return self.roofline.decode_step_ms(total_kv_tokens, batch)

    def prefill_ms(self, tokens: int, prompts: int = 1) -> float:
        return self.roofline.prefill_ms(tokens, prompts)


def service_timing(
    gpu: str | GpuSpec,
    model: str,
    *,
    quant: str | None = None,
    kv_dtype: str | None = None,
    runtime: str = "hf",
    calibration: CalibrationProfile | None = None,
) -> ServiceTiming:
    """Timing and KV budget for `model` (catalog id, suffix or config path) on `gpu`.

    Unknown ids raise `InputError`.
    """
    gpu_spec = gpu if isinstance(gpu, GpuSpec) else resolve_gpu(gpu)
    resolved = resolve_model(model, quant=quant)
    spec, scheme = resolved.spec, resolved.quant
    kv_name = resolve_kv_dtype(kv_dtype, scheme.name)
    workload = Workload(
        prompt_tokens=REFERENCE_PROMPT_TOKENS,
        max_tokens=1,
        prompt_tokens_is_default=True,
        max_tokens_is_default=True,
        runtime=runtime,
        kv_dtype=kv_name,
        margin_fraction=0.0,
        concurrency=1,
    )
    costs = step_costs(runtime, device_kind=gpu_spec.kind, calibration=calibration)
    cap = capacity(gpu_spec, spec, scheme, workload, costs=costs)
    budget = max(0, cap.memory.kv_budget_bytes)
    element = kv_dtype_bytes(kv_name)
    return ServiceTiming(
        roofline=cap.roofline,
        kv_budget_bytes=budget,
        max_context=min(spec.max_positions, max_tokens_in_budget(spec, budget, element)),
        gpu=gpu_spec.id,
        model=spec.id,
        quant=scheme.name,
        kv_dtype=kv_name,
        calibrated=costs.calibrated,
        basis=costs.basis,
    )
