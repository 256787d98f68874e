"""How big the engine's KV pool is: from `--kv-cache-memory`, `--gpu-memory-utilization`, or the
cpu default, with the same arithmetic as `capplan estimate --runtime capplan`
(`capplan.estimate.memory_capplan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from capplan.errors import InputError
from capplan.estimate.memory_capplan import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    EngineLimits,
    PoolPlan,
    block_bytes,
    cpu_default_budget,
    fixed_pool,
    plan_pool,
)
from capplan.estimate.shape import DecoderShape
from capplan.units import format_bytes


@dataclass(frozen=True)
class PoolChoice:
    plan: PoolPlan
    basis: str  # one line: which setting sized the pool, and from what


def engine_shape(model: Any) -> DecoderShape:
    """The model's sizes as the engine holds them (its KV in the model's own dtype)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    config = config or model.config
    heads = int(config.num_attention_heads)
    element = torch.empty((), dtype=model.dtype).element_size()
    return DecoderShape(
        layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        intermediate=int(config.intermediate_size),
        heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        vocab=int(config.vocab_size),
        act_bytes=element,
        kv_bytes=element,
    )


def choose_pool(
    shape: DecoderShape,
    limits: EngineLimits,
    *,
    device: str,
    kv_cache_memory: int | None,
    gpu_memory_utilization: float | None,
) -> PoolChoice:
    """The pool for this device: exactly `kv_cache_memory` bytes when given; on cuda what
    `gpu_memory_utilization` of the device leaves after what is in use (weights, context) and
    the workspace; on cpu room for max_batch requests at full context, at most 4 GiB."""
    if kv_cache_memory is not None:
        choice = PoolChoice(
            fixed_pool(shape, limits, kv_cache_memory),
            f"--kv-cache-memory {kv_cache_memory} ({format_bytes(kv_cache_memory)})",
        )
    elif device.startswith("cuda"):
        utilization = gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
        index = torch.device(device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        in_use = total - free  # the weights, the CUDA context and any other process
        budget = int(total * utilization) - in_use
        choice = PoolChoice(
            plan_pool(shape, limits, budget),
            f"--gpu-memory-utilization {utilization}: {format_bytes(int(total * utilization))} "
            f"of {format_bytes(total)}, minus {format_bytes(in_use)} in use after loading, "
            "minus the workspace",
        )
    else:
        budget = cpu_default_budget(shape, limits)
        choice = PoolChoice(
            fixed_pool(shape, limits, budget),
            f"cpu default: {limits.max_batch} requests at the full {limits.max_context}-token "
            "context, at most 4 GiB (set --kv-cache-memory to choose)",
        )
    if choice.plan.num_blocks < 1:
        raise InputError(
            f"the KV cache budget ({choice.basis}) holds not one block of 16 tokens "
            f"({format_bytes(block_bytes(shape))}); raise --kv-cache-memory or "
            "--gpu-memory-utilization"
        )
    return choice
