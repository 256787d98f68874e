"""An engine for a loaded model: its pool sized for the device, allocated now."""

from __future__ import annotations

from typing import Any

import torch

from capplan.estimate.memory_capplan import EngineLimits
from reference_server.engine.budget import PoolChoice, choose_pool, engine_shape
from reference_server.engine.engine import FixedKvEngine
from reference_server.engine.pool import KvPool


def build_engine(
    model: Any,
    limits: EngineLimits,
    *,
    eos_token_ids: set[int],
    kv_cache_memory: int | None = None,
    gpu_memory_utilization: float | None = None,
) -> tuple[FixedKvEngine, PoolChoice]:
    """A `FixedKvEngine` over `model` (on its device) and how its pool was sized."""
    device = model.device if isinstance(model.device, torch.device) else torch.device(model.device)
    shape = engine_shape(model)
    choice = choose_pool(
        shape,
        limits,
        device=str(device),
        kv_cache_memory=kv_cache_memory,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    pool = KvPool(shape, choice.plan.num_blocks, dtype=model.dtype, device=device)
    return FixedKvEngine(model, pool, limits=limits, eos_token_ids=eos_token_ids), choice
