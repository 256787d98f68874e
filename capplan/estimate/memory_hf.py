"""Memory budget under `--runtime hf` (transformers `generate`, what the reference server runs).

    total = weights + CUDA context + margin + (prefill activations + c x KV per request) x (1 + f)

where f is the caching allocator's reserve (fragmentation from caches that grow by
`torch.cat` every step), the margin is a stated fraction of total memory, and c is the number
of requests in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from capplan.estimate.architecture import ModelSpec
from capplan.estimate.kv_cache import kv_bytes_for_context, kv_bytes_per_token
from capplan.estimate.quantization import QuantScheme

MIB = 1024**2
# CUDA context, cuBLAS workspaces and loaded kernels: a few hundred MiB, outside
# torch.cuda.memory_allocated(); 400 MiB matches an RTX 3080 with lazy module loading.
CUDA_CONTEXT_BYTES = 400 * MIB
# CPU inference: the Python process with torch and a tokenizer loaded, before any weights.
CPU_PROCESS_BYTES = 1024 * MIB
ALLOCATOR_RESERVE_FRACTION = 0.10
SAFETY_MARGIN_FRACTION = 0.03


@dataclass(frozen=True)
class HfAssumptions:
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES
    allocator_reserve_fraction: float = ALLOCATOR_RESERVE_FRACTION
    margin_fraction: float = SAFETY_MARGIN_FRACTION


@dataclass(frozen=True)
class HfBudget:
    """Every term of the hf budget, per GPU (per rank under tensor parallelism)."""

    total_bytes: int
    weights_bytes: int
    cuda_context_bytes: int
    margin_bytes: int
    activation_bytes: int
    request_tokens: int
    kv_per_token_bytes: int
    kv_per_request_bytes: int
    kv_budget_bytes: int  # what is left for KV once everything else (reserve included) is paid
    max_concurrency: int
    allocator_reserve_bytes: int  # at max_concurrency
    kv_in_use_bytes: int  # at max_concurrency
    free_bytes: int  # left over at max_concurrency

    @property
    def fits(self) -> bool:
        return self.max_concurrency >= 1


def prefill_activation_bytes(spec: ModelSpec, scheme: QuantScheme, tokens: int, tp: int = 1) -> int:
    """Peak temporaries of one prefill forward of `tokens` tokens.

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


def hf_budget(
    spec: ModelSpec,
    scheme: QuantScheme,
    *,
    total_bytes: int,
    weights_bytes: int,
    kv_element_bytes: int,
    prompt_tokens: int,
    max_tokens: int,
    tp: int = 1,
    assumptions: HfAssumptions | None = None,
) -> HfBudget:
    a = assumptions or HfAssumptions()
    request_tokens = prompt_tokens + max_tokens
    per_request = kv_bytes_for_context(spec, request_tokens, kv_element_bytes, tp)
    activations = prefill_activation_bytes(spec, scheme, prompt_tokens, tp)
    margin = int(total_bytes * a.margin_fraction)
    f = a.allocator_reserve_fraction
    room = total_bytes - weights_bytes - a.cuda_context_bytes - margin
    kv_budget = int(room / (1 + f)) - activations
    concurrency = max(0, kv_budget // per_request) if per_request > 0 else 0
    kv_in_use = concurrency * per_request
    reserve = int((activations + kv_in_use) * f)
    used = weights_bytes + a.cuda_context_bytes + margin + activations + kv_in_use + reserve
    return HfBudget(
        total_bytes=total_bytes,
        weights_bytes=weights_bytes,
        cuda_context_bytes=a.cuda_context_bytes,
        margin_bytes=margin,
        activation_bytes=activations,
        request_tokens=request_tokens,
        kv_per_token_bytes=kv_bytes_per_token(spec, kv_element_bytes, tp),
        kv_per_request_bytes=per_request,
        kv_budget_bytes=kv_budget,
        max_concurrency=int(concurrency),
        allocator_reserve_bytes=reserve,
        kv_in_use_bytes=kv_in_use,
        free_bytes=total_bytes - used,
    )
