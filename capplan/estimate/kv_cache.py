"""KV cache bytes: 2 (K and V) x layers x kv_heads x head_dim x bytes per element, per token.

Sliding-window layers hold at most their window. transformers' `DynamicSlidingWindowLayer`
keeps the last `window - 1` tokens; vLLM pages are accounted for in `memory_vllm`.
"""

from __future__ import annotations

from capplan.errors import InputError
from capplan.estimate.architecture import ModelSpec

KV_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}


def kv_dtype_bytes(kv_dtype: str) -> int:
    try:
        return KV_DTYPE_BYTES[kv_dtype]
    except KeyError:
        raise InputError(
            f"unknown --kv-dtype '{kv_dtype}'; choose one of auto, {', '.join(KV_DTYPE_BYTES)}"
        ) from None


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads one tensor-parallel rank holds (replicated when fewer heads than ranks)."""
    return max(1, spec.kv_heads // tp)


def kv_bytes_per_token_layer(spec: ModelSpec, element_bytes: int, tp: int = 1) -> int:
    return 2 * kv_heads_per_rank(spec, tp) * spec.head_dim * element_bytes


def kv_bytes_per_token(spec: ModelSpec, element_bytes: int, tp: int = 1) -> int:
    """KV bytes one more token costs while no sliding window is full."""
    return spec.layers * kv_bytes_per_token_layer(spec, element_bytes, tp)


def held_tokens(window: int | None, tokens: int) -> int:
    """Tokens a layer holds after `tokens` have been cached (transformers keeps window - 1)."""
    if window is None:
        return tokens
    return min(tokens, window - 1)


def kv_bytes_for_context(spec: ModelSpec, tokens: int, element_bytes: int, tp: int = 1) -> int:
    """KV bytes held for one sequence of `tokens` cached tokens, windows applied."""
    per_layer = kv_bytes_per_token_layer(spec, element_bytes, tp)
    return sum(per_layer * held_tokens(spec.window(i), tokens) for i in range(spec.layers))


def max_tokens_in_budget(spec: ModelSpec, budget: int, element_bytes: int, tp: int = 1) -> int:
    """Largest cached length whose KV fits in `budget` bytes (may exceed the windows)."""
    if budget <= 0:
        return 0
    per_token = kv_bytes_per_token(spec, element_bytes, tp)
    if not spec.has_sliding_window:
        return budget // per_token
    low, high = 0, max(spec.max_positions, budget // per_token) * 4
    while low < high:
        mid = (low + high + 1) // 2
        if kv_bytes_for_context(spec, mid, element_bytes, tp) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def resolve_kv_dtype(kv_dtype: str | None, weight_scheme: str) -> str:
    """`auto` (or None) is the compute dtype: fp32 for fp32 weights, 16-bit otherwise."""
    if kv_dtype is None or kv_dtype.strip().lower() == "auto":
        return "fp32" if weight_scheme == "fp32" else "fp16"
    key = kv_dtype.strip().lower()
    kv_dtype_bytes(key)
    return key
