"""The estimator against the shared H200 measurement of plain transformers `generate()`.

Ground truth (shared/facts/gpu-2026-11-30/memtruth.json, copied below with its source): a Qwen3-8B
shape in bf16, sdpa, greedy `generate()` of 512 prompt + exactly 512 new tokens
(`min_new_tokens`, so two min-length logits processors run every step), batch 1, 16, 64, 128,
torch 2.11+cu130, transformers 5.17, driver 580. NVML "used" was 0.648 GB on the idle GPU; the
process's device memory is NVML's peak minus that.
"""

from __future__ import annotations

import pytest

from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.model_spec import resolve_model

NVML_IDLE = 648_347_648
# batch: (NVML peak, peak allocated, peak reserved, decode ms per step), memtruth.json
MEASURED = {
    1: (18_121_359_360, 16_573_771_264, 16_695_427_072, 70.8),
    16: (21_892_038_656, 18_889_125_888, 20_413_677_568, 78.6),
    64: (40_776_892_416, 26_298_912_768, 39_248_199_680, 72.3),
    128: (83_762_216_960, 36_166_472_704, 82_181_095_424, 85.4),
}


def estimate_at(batch: int):
    request = EstimateRequest(
        gpu=resolve_gpu("h200"),
        model=resolve_model("qwen3-8b"),
        prompt_tokens=512,
        max_tokens=512,
        concurrency=batch,
        margin=0.0,
    )
    return estimate(request)


@pytest.mark.parametrize("batch", sorted(MEASURED))
def test_device_peak_of_generate_is_within_10_percent_of_nvml(batch: int) -> None:
    nvml_peak = MEASURED[batch][0] - NVML_IDLE
    memory = estimate_at(batch).memory
    assert memory.concurrency == batch
    assert memory.peak_bytes == pytest.approx(nvml_peak, rel=0.10)


@pytest.mark.parametrize("batch", sorted(MEASURED))
def test_allocated_peak_of_generate_is_within_3_percent(batch: int) -> None:
    assert estimate_at(batch).memory.allocated_peak_bytes == pytest.approx(
        MEASURED[batch][1], rel=0.03
    )


@pytest.mark.parametrize("batch", sorted(MEASURED))
def test_decode_step_with_the_default_hf_profile_is_within_25_percent(batch: int) -> None:
    timing = estimate_at(batch).timing
    assert timing.concurrency == batch and timing.decode_bound == "floor"
    assert timing.decode_ms_per_token_at_concurrency == pytest.approx(MEASURED[batch][3], rel=0.25)


def test_the_recommendation_stops_where_the_gpu_fills_not_where_allocation_does() -> None:
    # What 778 requests (capplan's figure before this model) would do: reserved memory fills the
    # 140 GiB card long before what is allocated does.
    r = estimate(EstimateRequest(resolve_gpu("h200"), resolve_model("qwen3-8b"), 512, 512))
    assert r.concurrency < r.zero_margin_concurrency / 3
    assert r.concurrency_bound.startswith("memory as the GPU sees it")
    assert r.memory.peak_bytes + r.memory.margin_bytes <= r.memory.total_bytes
    assert r.zero_margin_concurrency > 700
