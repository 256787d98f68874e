"""PyTorch's CUDA caching allocator under a cache that grows every step: the reserved peak.

Placeholder until the allocator model lands: reserved = allocated.
"""

from __future__ import annotations

ALLOC_CONFS = ("default", "expandable")


def reserved_peak(
    *,
    alloc_conf: str,
    allocated_peak: int,
    weights_bytes: int,
    kv_tensor_step_bytes: int,
    kv_tensor_prompt_bytes: int,
    kv_tensors: int,
    decode_steps: int,
    prefill_activation_bytes: int,
) -> int:
    """What the allocator holds at its peak (bytes, weights included)."""
    return allocated_peak
