"""`--runtime capplan`: the engine's memory is a sum of terms sized at start, the same
arithmetic the server runs, and the pool it emits is the pool the server allocates."""

from __future__ import annotations

import pytest

from capplan.errors import InputError
from capplan.estimate.capacity import VllmOptions
from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.memory_capplan import (
    BLOCK_SIZE,
    CPU_DEFAULT_KV_BYTES,
    EngineLimits,
    fixed_pool,
    plan_pool,
    pool_blocks,
    pool_bytes,
    workspace,
)
from capplan.estimate.model_spec import resolve_model
from capplan.estimate.shape import DecoderShape

QWEN3_8B = DecoderShape(
    layers=36, hidden=4096, intermediate=12288, heads=32, kv_heads=8, head_dim=128,
    vocab=151936, act_bytes=2, kv_bytes=2,
)  # fmt: skip
LIMITS = EngineLimits(max_batch=64, prefill_chunk_tokens=512, max_context=40960)


def test_the_pool_is_whole_blocks_plus_one_trash_block() -> None:
    per_token = 36 * 2 * 8 * 128 * 2
    assert QWEN3_8B.kv_bytes_per_token == per_token
    assert pool_bytes(QWEN3_8B, 10) == (10 + 1) * BLOCK_SIZE * per_token
    assert pool_blocks(QWEN3_8B, pool_bytes(QWEN3_8B, 10)) == 10  # the emit round trip
    assert pool_blocks(QWEN3_8B, pool_bytes(QWEN3_8B, 10) - 1) == 9


def test_a_planned_pool_and_its_workspace_fill_the_budget_and_no_more() -> None:
    budget = 100 * 1024**3
    plan = plan_pool(QWEN3_8B, LIMITS, budget)
    assert plan.total_bytes <= budget
    bigger = fixed_pool(QWEN3_8B, LIMITS, pool_bytes(QWEN3_8B, plan.num_blocks + 1))
    assert bigger.total_bytes > budget


def test_the_workspace_grows_with_the_batch_and_the_chunk() -> None:
    pool = 500_000
    small = workspace(QWEN3_8B, LIMITS, pool)
    wide = workspace(QWEN3_8B, EngineLimits(256, 512, 40960), pool)
    long_chunk = workspace(QWEN3_8B, EngineLimits(64, 4096, 40960), pool)
    assert wide.decode_bytes > small.decode_bytes
    assert long_chunk.prefill_bytes > small.prefill_bytes
    assert wide.block_table_bytes == 256 * (40960 // 16) * 8


def test_capplan_on_a_gpu_plans_vllms_share_and_emits_the_pool() -> None:
    result = estimate(
        EstimateRequest(gpu=resolve_gpu("h100"), model=resolve_model("qwen3-8b"), runtime="capplan")
    )
    b = result.capplan
    assert b is not None and result.fits
    assert b.gpu_memory_utilization == 0.9
    assert b.peak_bytes <= b.requested_bytes  # weights, context, pool and workspace in the share
    assert result.settings.kv_cache_memory == b.pool_bytes
    assert result.settings.max_batch == b.limits.max_batch == result.concurrency
    assert b.workload_concurrency >= result.concurrency
    assert b.workload_concurrency >= result.concurrency
    assert result.memory.peak_bytes == b.peak_bytes


def test_gpu_memory_utilization_sizes_capplans_pool() -> None:
    def pool(utilization: float | None) -> int:
        request = EstimateRequest(
            gpu=resolve_gpu("h100"),
            model=resolve_model("qwen3-8b"),
            runtime="capplan",
            vllm=VllmOptions(gpu_memory_utilization=utilization),
        )
        b = estimate(request).capplan
        assert b is not None
        return b.pool_bytes

    assert pool(0.5) < pool(None) < pool(0.95)


def test_capplan_on_a_cpu_takes_the_ram_left_at_most_4_gib() -> None:
    cpu = resolve_gpu("cpu", vram="64GiB", cores=8)
    b = estimate(EstimateRequest(gpu=cpu, model=resolve_model("embedded"), runtime="capplan"))
    assert b.capplan is not None and b.capplan.pool_bytes <= CPU_DEFAULT_KV_BYTES
    assert b.capplan.gpu_memory_utilization is None


def test_other_runtimes_emit_no_pool() -> None:
    result = estimate(EstimateRequest(gpu=resolve_gpu("h100"), model=resolve_model("qwen3-8b")))
    assert result.capplan is None and result.settings.kv_cache_memory is None


def test_alloc_conf_is_refused_for_capplan() -> None:
    with pytest.raises(InputError, match="--alloc-conf"):
        estimate(
            EstimateRequest(
                gpu=resolve_gpu("h100"),
                model=resolve_model("qwen3-8b"),
                runtime="capplan",
                alloc_conf="expandable",
            )
        )
