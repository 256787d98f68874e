"""Attention over the pool's gathered keys, with each KV head's query heads packed together.

transformers' sdpa path copies K and V once per query head (`repeat_kv`) whenever a mask is
given (before 5.2x, even in one-token decode steps): a copy of the gathered keys times the
group size, per layer. Here the query heads that share a KV head are packed onto the query axis
instead, so one sdpa call reads each gathered KV head once; the engine builds the mask in that
packed shape once per forward (`[rows, 1, groups x queries, keys]`, True = attend).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

NAME = "capplan_pool"


def pool_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """`query` [rows, heads, q, dim], `key`/`value` [rows, kv_heads, keys, dim] -> the
    attention output as transformers expects it: [rows, q, heads, dim]."""
    rows, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    packed = query.reshape(rows, kv_heads, heads // kv_heads * queries, dim)
    out = F.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(rows, heads, queries, dim).transpose(1, 2).contiguous(), None


def packed_mask(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """`mask` [rows, queries, keys] -> [rows, 1, groups x queries, keys] for `pool_attention`."""
    return mask[:, None].repeat(1, 1, groups, 1) if groups > 1 else mask[:, None]


@contextmanager
def attending_to_the_pool(model: Any) -> Iterator[None]:
    """Route the model's attention layers to `pool_attention` while the engine runs it."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, pool_attention)
    config = model.config
    previous = config._attn_implementation
    _set(model, NAME)
    try:
        yield
    finally:
        _set(model, previous)


def _set(model: Any, implementation: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(implementation)
    else:  # older releases read the config at every forward
        model.config._attn_implementation = implementation
