"""The one entry from what a user typed to an estimate, shared by every command that needs one.

`estimate`, `plan` and `validate` (and any later command) take the same options, resolved the
same way: the GPU (catalog id, `auto`, `cpu` or custom figures), the model (catalog id with a
quantization suffix, or a local config), then `estimator.estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from capplan.estimate.architecture import ModelSpec
from capplan.estimate.calibration import StepCosts, read_profile, step_costs
from capplan.estimate.capacity import VllmOptions, step_model
from capplan.estimate.estimator import DEFAULT_MARGIN, EstimateRequest, estimate
from capplan.estimate.gpu_spec import GpuSpec, resolve_gpu
from capplan.estimate.kv_cache import resolve_kv_dtype
from capplan.estimate.model_spec import resolve_model
from capplan.estimate.result import EstimateResult, Workload
from capplan.estimate.roofline import Roofline


@dataclass(frozen=True)
class EstimateOptions:
    """An estimate's inputs as the command line spells them (None: the estimator's default)."""

    model: str
    gpu: str | None = None
    prompt_tokens: int | None = None
    max_tokens: int | None = None
    quant: str | None = None
    group_size: int | None = None
    double_quant: bool | None = None
    kv_dtype: str | None = "auto"
    runtime: str = "hf"
    gpus: int = 1
    tp: int = 1
    margin: float = DEFAULT_MARGIN
    gpu_memory_utilization: float | None = None  # None: the vLLM release's default
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    vllm_version: str | None = None  # None: the newest release line capplan knows
    enforce_eager: bool = False
    target_concurrency: int | None = None
    clients: int = 1
    vram: str | None = None
    cores: int | None = None
    bandwidth: str | None = None
    tflops: str | None = None
    concurrency: int | None = None
    alloc_conf: str = "default"
    calibration: str | None = None  # a `capplan calibrate` profile


def estimate_from_options(options: EstimateOptions) -> EstimateResult:
    """Resolve the GPU and the model, then estimate. Bad input raises `InputError`."""
    o = options
    gpu = resolve_gpu(o.gpu, vram=o.vram, bandwidth=o.bandwidth, tflops=o.tflops, cores=o.cores)
    model = resolve_model(
        o.model, quant=o.quant, group_size=o.group_size, double_quant=o.double_quant
    )
    profile = read_profile(o.calibration) if o.calibration else None
    return estimate(
        EstimateRequest(
            gpu=gpu,
            model=model,
            prompt_tokens=o.prompt_tokens,
            max_tokens=o.max_tokens,
            runtime=o.runtime,
            kv_dtype=o.kv_dtype,
            gpus=o.gpus,
            tp=o.tp,
            margin=o.margin,
            target_concurrency=o.target_concurrency,
            clients=o.clients,
            vllm=VllmOptions(
                gpu_memory_utilization=o.gpu_memory_utilization,
                max_model_len=o.max_model_len,
                max_num_seqs=o.max_num_seqs,
                max_num_batched_tokens=o.max_num_batched_tokens,
                version=o.vllm_version,
                enforce_eager=o.enforce_eager,
            ),
            concurrency=o.concurrency,
            alloc_conf=o.alloc_conf,
            calibration=profile,
        )
    )


@dataclass(frozen=True)
class StepModel:
    """The step model of the options' GPU, model and runtime, without the memory budget."""

    roofline: Roofline
    spec: ModelSpec
    gpu: GpuSpec
    costs: StepCosts


def step_model_from_options(options: EstimateOptions) -> StepModel:
    """The roofline with the runtime's floor and efficiencies (calibrated or the defaults)."""
    o = options
    gpu = resolve_gpu(o.gpu, vram=o.vram, bandwidth=o.bandwidth, tflops=o.tflops, cores=o.cores)
    model = resolve_model(o.model, quant=o.quant, group_size=o.group_size)
    profile = read_profile(o.calibration) if o.calibration else None
    costs = step_costs(o.runtime, device_kind=gpu.kind, calibration=profile)
    workload = Workload(
        prompt_tokens=o.prompt_tokens or 1,
        max_tokens=o.max_tokens or 1,
        prompt_tokens_is_default=o.prompt_tokens is None,
        max_tokens_is_default=o.max_tokens is None,
        runtime=o.runtime,
        kv_dtype=resolve_kv_dtype(o.kv_dtype, model.quant.name),
    )
    return StepModel(
        step_model(gpu, model.spec, model.quant, workload, costs), model.spec, gpu, costs
    )
