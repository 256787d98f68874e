"""Memory under `--runtime hf`: the user's server calling transformers `generate()` on a batch of
`c` requests with the default DynamicCache, as the seeds' servers do.

Two peaks, both at `c` requests:

    allocated = weights + max(prefill: c x KV(prompt) + activations of c prompts,
                              decode end: c x KV(prompt + max_tokens) + one layer's cat copy
                              + the step's logits)
    reserved  = what PyTorch's caching allocator holds: allocated, plus the cached blocks that the
                growing cache leaves behind (`allocator.reserved_peak`)
    device    = CUDA context + reserved: what NVML (nvidia-smi) shows for the process

`allocated` decides when `generate()` raises out-of-memory (the allocator frees its cache and
retries before it gives up); `device` is what the GPU, and every other process on it, sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from capplan.estimate.allocator import generate_peaks
from capplan.estimate.architecture import ModelSpec
from capplan.estimate.kv_cache import kv_bytes_for_context, kv_bytes_per_token
from capplan.estimate.quantization import QuantScheme
from capplan.estimate.shape import DecoderShape

MIB = 1024**2
# The CUDA context and cuBLAS workspaces, outside torch.cuda.memory_allocated(): the default of
# capplan/catalog/runtimes.toml (a consumer GPU with lazy module loading; the H200's is measured).
CUDA_CONTEXT_BYTES = 400 * MIB
# CPU inference: the Python process with torch, transformers and the server loaded, before any
# weights: `capplan serve` with the 0.3 MiB embedded model held 385 MiB RSS (404,037,632 B after
# a load test; torch 2.13 CPU, transformers 5.24, this 2-core machine).
CPU_PROCESS_BYTES = 385 * MIB
SAFETY_MARGIN_FRACTION = 0.03
MAX_SEARCH = 1 << 20  # requests: beyond any real batch


def prefill_activation_bytes(spec: ModelSpec, scheme: QuantScheme, tokens: int, tp: int = 1) -> int:
    """Peak temporaries of one prefill forward of `tokens` tokens (all prompts together).

    Per layer the largest live set is the gated MLP: gate and up outputs and their product
    (3 x tokens x intermediate) next to the residual stream, the normed input and an fp32
    RMSNorm upcast. bitsandbytes int8 also holds the int8 copy of the input and an int32
    accumulator. generate() keeps only the last position's logits (fp32).
    """
    element = 4 if scheme.name == "fp32" else 2
    intermediate = spec.intermediate // tp
    mlp = 3 * tokens * intermediate * element
    residual = 3 * tokens * spec.hidden * element + tokens * spec.hidden * 4
    attention = tokens * (spec.heads + 2 * spec.kv_heads) * spec.head_dim * element // tp
    extra = tokens * intermediate * (4 + 1) if scheme.name == "int8" else 0
    logits = spec.vocab * 4 * 2
    return mlp + residual + attention + extra + logits


@dataclass(frozen=True)
class HfPeak:
    """Every term at one concurrency, per GPU (per rank under tensor parallelism)."""

    concurrency: int
    kv_bytes: int  # the batch's cache at its largest
    activation_bytes: int  # what the peak holds besides weights and cache
    phase: str  # "prefill" or "decode end": where the allocated peak falls
    allocated_peak_bytes: int  # weights + cache + activations: decides out-of-memory
    reserved_peak_bytes: int  # what the caching allocator holds at its peak
    peak_bytes: int  # context + reserved: what NVML shows for the process


@dataclass(frozen=True)
class HfShape:
    """One workload on one model, reduced to the sizes the peaks need.

    `alloc_conf` is the caching allocator's configuration ("default", "expandable"), or "none"
    on a CPU (no caching allocator: what is allocated is what the process holds).
    `logits_processors`: 2 when generate() gets min_new_tokens (the H200 measurement), else 0.
    """

    spec: ModelSpec
    scheme: QuantScheme
    weights_bytes: int
    kv_element_bytes: int
    prompt_tokens: int
    max_tokens: int
    context_bytes: int
    tp: int = 1
    alloc_conf: str = "default"
    logits_processors: int = 0

    def allocated(self, concurrency: int) -> tuple[int, int, int, str]:
        """(allocated peak, KV at the peak, activations at the peak, phase) at `concurrency`."""
        c = max(1, concurrency)
        p, m = self.prompt_tokens, self.max_tokens
        spec, tp, element = self.spec, self.tp, self.kv_element_bytes
        kv_prompt = c * kv_bytes_for_context(spec, p, element, tp)
        kv_full = c * kv_bytes_for_context(spec, p + m, element, tp)
        prefill_act = prefill_activation_bytes(spec, self.scheme, c * p, tp) - spec.vocab * 8
        logits = c * spec.vocab * (4 + 4 + 2)  # bf16 head output, fp32 copy, processed scores
        # torch.cat holds a layer's old and new K (or V) at once: one more tensor of the layer.
        cat_copy = c * (p + m) * kv_bytes_for_context(spec, 1, element, tp) // (2 * spec.layers)
        prefill = kv_prompt + prefill_act + logits
        decode = kv_full + cat_copy + logits if m > 0 else 0
        if prefill >= decode:
            return self.weights_bytes + prefill, kv_prompt, prefill - kv_prompt, "prefill"
        return self.weights_bytes + decode, kv_full, decode - kv_full, "decode end"

    def peak(self, concurrency: int) -> HfPeak:
        c = max(1, concurrency)
        allocated, kv, activations, phase = self.allocated(c)
        reserved = allocated + self.cache_bytes(c)
        return HfPeak(
            concurrency=c,
            kv_bytes=kv,
            activation_bytes=activations,
            phase=phase,
            allocated_peak_bytes=allocated,
            reserved_peak_bytes=reserved,
            peak_bytes=self.context_bytes + reserved,
        )

    def cache_bytes(self, concurrency: int) -> int:
        """What the caching allocator reserves beyond what is allocated, at its peak: replayed
        from generate()'s allocations on the allocator's rules (`allocator.generate_peaks`)."""
        if self.alloc_conf == "none":
            return 0
        spec = self.spec
        shape = DecoderShape.from_spec(spec, self.scheme, tp=self.tp)
        peaks = generate_peaks(
            shape,
            concurrency,
            self.prompt_tokens,
            self.max_tokens,
            tied=spec.tied_embeddings,
            logits_processors=self.logits_processors,
            alloc_conf=self.alloc_conf,
        )
        return max(0, peaks.reserved - peaks.allocated)


def largest_fitting(fits: Callable[[int], bool], highest: int | None = None) -> int:
    """The largest c >= 1 with `fits(c)` (monotone), or 0 when not even one fits; with
    `highest`, searched by bisection below it (each `fits` may be a replay: few calls)."""
    if highest is None:
        if not fits(1):
            return 0
        low, high = 1, 2
        while high < MAX_SEARCH and fits(high):
            low, high = high, high * 2
        if high >= MAX_SEARCH:
            return MAX_SEARCH
    else:
        if highest < 1 or not fits(1):
            return 0
        if fits(highest):
            return highest
        low, high = 1, highest
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class HfBudget:
    """The hf budget per GPU: how many requests fit, by which bound, and the terms at `at`."""

    total_bytes: int
    weights_bytes: int
    cuda_context_bytes: int
    margin_bytes: int
    alloc_conf: str
    request_tokens: int
    kv_per_token_bytes: int
    kv_per_request_bytes: int
    kv_budget_bytes: int  # KV room beside weights, context, margin and one request's activations
    max_concurrency: int  # device peak + margin within total: the recommendation's memory bound
    oom_concurrency: int  # allocated peak + context within total: past it generate() raises
    at: HfPeak  # the terms at the concurrency asked for (or max_concurrency)
    free_bytes: int  # total - device peak at `at`

    @property
    def fits(self) -> bool:
        return self.max_concurrency >= 1


def hf_budget(
    shape: HfShape,
    *,
    total_bytes: int,
    margin_fraction: float,
    at: int | None,
    limit: int | None = None,
) -> HfBudget:
    """How many requests of `shape` fit in `total_bytes` (searched no higher than `limit`); the
    terms at `at` (default: that many)."""
    margin = int(total_bytes * margin_fraction)
    # The allocated peak is cheap (arithmetic); the reserved one a replay. Reserved >= allocated,
    # so the replays only search below the out-of-memory ceiling.
    oom = largest_fitting(lambda c: shape.context_bytes + shape.allocated(c)[0] <= total_bytes)
    best = largest_fitting(
        lambda c: shape.peak(c).peak_bytes + margin <= total_bytes,
        highest=oom if limit is None else min(oom, limit),
    )
    chosen = shape.peak(at if at is not None else max(1, best))
    per_request = kv_bytes_for_context(
        shape.spec, shape.prompt_tokens + shape.max_tokens, shape.kv_element_bytes, shape.tp
    )
    one = shape.peak(1)
    room = total_bytes - shape.weights_bytes - shape.context_bytes - margin
    return HfBudget(
        total_bytes=total_bytes,
        weights_bytes=shape.weights_bytes,
        cuda_context_bytes=shape.context_bytes,
        margin_bytes=margin,
        alloc_conf=shape.alloc_conf,
        request_tokens=shape.prompt_tokens + shape.max_tokens,
        kv_per_token_bytes=kv_bytes_per_token(shape.spec, shape.kv_element_bytes, shape.tp),
        kv_per_request_bytes=per_request,
        kv_budget_bytes=room - one.activation_bytes,
        max_concurrency=best,
        oom_concurrency=oom,
        at=chosen,
        free_bytes=total_bytes - chosen.peak_bytes,
    )
