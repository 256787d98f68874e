"""`--vllm-version`: each release line's defaults and budget terms, as read in its wheel."""

from __future__ import annotations

import pytest

from capplan.catalog.vllm_versions import vllm_version
from capplan.errors import InputError
from capplan.estimate.capacity import VllmOptions
from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.model_spec import resolve_model

GIB = 1024**3


def vllm(gpu: str, model: str = "qwen3-8b", tp: int = 1, **options: object):
    """The vLLM budget of one estimate at 512 + 512 tokens, max_model_len 8192."""
    result = estimate(
        EstimateRequest(
            gpu=resolve_gpu(gpu),
            model=resolve_model(model),
            runtime="vllm",
            gpus=tp,
            tp=tp,
            vllm=VllmOptions(**{"max_model_len": 8192, **options}),  # type: ignore[arg-type]
        )
    )
    assert result.vllm is not None
    return result.vllm


@pytest.mark.parametrize(
    "version, line",
    [
        ("0.8.0", "0.8.0-0.8.3"),
        ("0.8.5.post1", "0.8.5-0.8.x"),
        ("0.9.0", "0.9.0"),
        ("0.10.1.1", "0.9.1-0.16.x"),
        ("0.19.1", "0.17.0-0.19.x"),
        ("v0.31.0", "0.29.0-0.33.x"),
        ("0.33.9", "0.29.0-0.33.x"),
    ],
)
def test_every_known_release_falls_in_one_line(version: str, line: str) -> None:
    assert vllm_version(version).line == line


@pytest.mark.parametrize("version", ["0.34.0", "1.0.0", "0.7.3", "0.9", "latest", "0.9.x"])
def test_unknown_or_malformed_releases_name_the_known_range(version: str) -> None:
    with pytest.raises(InputError, match=r"0\.8\.0 to 0\.33\.x") as info:
        vllm_version(version)
    assert "\n" not in str(info.value)


def test_utilization_default_follows_the_release_and_an_explicit_value_wins() -> None:
    assert vllm("a100-40", version="0.19.1").gpu_memory_utilization == 0.90
    assert vllm("a100-40", version="0.20.0").gpu_memory_utilization == 0.92
    given = vllm("a100-40", version="0.20.0", gpu_memory_utilization=0.8)
    assert given.gpu_memory_utilization == 0.8
    assert given.basis["gpu_memory_utilization"] == "--gpu-memory-utilization"


@pytest.mark.parametrize(
    "gpu, version, tokens, seqs",
    [
        ("a100-40", "0.8.0", 2048, 1024),  # 1024 sequences on every GPU
        ("h100", "0.8.0", 8192, 1024),  # large by device name
        ("a100-80", "0.8.4", 2048, 256),  # 0.8.4: H100/H200 only
        ("a100-80", "0.8.5", 8192, 1024),  # 0.8.5: any GPU >= 70 GiB
        ("a100-80", "0.9.0", 2048, 256),  # 0.9.0+: not an A100
        ("h200", "0.33.0", 8192, 1024),
        ("rtx3090", "0.33.0", 2048, 256),
    ],
)
def test_scheduler_defaults_follow_each_release(
    gpu: str, version: str, tokens: int, seqs: int
) -> None:
    v = vllm(gpu, version=version)
    assert (v.max_num_batched_tokens, v.max_num_seqs) == (tokens, seqs)


def test_sampler_path_and_bytes_per_logit_follow_the_release() -> None:
    native = vllm("a100-40", version="0.16.0")
    assert native.sampler == "native" and native.runner == "v1"
    assert native.sampler_bytes == 256 * 151936 * 38 + 2048 * 4096 * 2
    triton = vllm("a100-40", version="0.17.0")
    # 14 B per element plus the cached min(SMs, rows) x vocab fp32 buffer (108 SMs).
    assert triton.sampler_bytes == 256 * 151936 * 14 + 2048 * 4096 * 2 + 108 * 151936 * 4
    assert vllm("a100-40", version="0.33.0").sampler == "v2"


def test_model_runner_v2_is_the_default_only_where_the_release_makes_it_so() -> None:
    assert vllm("a100-80", "qwen3-8b", version="0.22.1").runner == "v2"
    assert vllm("a100-80", "llama-3.1-8b", version="0.22.1").runner == "v1"
    assert vllm("a100-80", "llama-3.1-8b", version="0.23.0").runner == "v2"
    assert vllm("a100-80", "llama-3.1-8b-awq", version="0.23.0").runner == "v1"  # quantized
    assert vllm("a100-80", "llama-3.1-8b-awq", version="0.24.0").runner == "v2"
    assert vllm("a100-80", "qwen2.5-7b", version="0.24.0").runner == "v1"
    assert vllm("a100-80", "qwen2.5-7b", version="0.25.1").runner == "v2"


def test_cuda_graph_estimate_is_subtracted_where_the_release_does_it() -> None:
    assert vllm("a100-80", "qwen2.5-7b", version="0.19.1").cudagraph_bytes == 0
    assert vllm("a100-80", "qwen2.5-7b", version="0.20.0").cudagraph_bytes == GIB // 2
    assert vllm("a100-80", "qwen2.5-7b", version="0.28.0").cudagraph_bytes == 0  # V2, returns 0
    assert vllm("a100-80", "qwen2.5-7b", version="0.29.0").cudagraph_bytes == GIB // 2
    eager = vllm("a100-80", "qwen2.5-7b", version="0.29.0", enforce_eager=True)
    assert eager.cudagraph_bytes == 0 and "enforce-eager" in eager.basis["cudagraph"]
    with_graphs = vllm("a100-80", "qwen2.5-7b", version="0.29.0")
    assert eager.kv_budget_bytes - with_graphs.kv_budget_bytes == GIB // 2


def test_non_torch_includes_the_cuda_context_only_up_to_0_9_0() -> None:
    assert vllm("a100-40", version="0.9.0").non_torch_bytes == GIB // 2
    assert vllm("a100-40", version="0.9.1").non_torch_bytes == int(0.1 * GIB)


def test_concurrency_counts_whole_pages_from_0_9_1_and_tokens_before() -> None:
    old = vllm("a100-40", version="0.9.0", max_model_len=1032)
    assert old.max_concurrency_full_length == pytest.approx(old.kv_cache_tokens / 1032)
    new = vllm("a100-40", version="0.9.1", max_model_len=1032)  # cdiv(1032, 16) = 65 pages
    assert new.max_concurrency_full_length == pytest.approx((new.kv_cache_tokens // 16) / 65)


def test_sampler_is_not_split_by_tensor_parallel_but_the_forward_is() -> None:
    one = vllm("a100-80", "llama-3.1-70b-fp8", tp=2, version="0.16.0")
    four = vllm("a100-80", "llama-3.1-70b-fp8", tp=4, version="0.16.0")
    assert one.sampler_bytes == four.sampler_bytes  # every rank all-gathers full logits
    assert four.forward_bytes < one.forward_bytes


def test_weights_include_the_rotary_cache_once() -> None:
    v = vllm("a100-80", "llama-3.1-8b", version="0.16.0")
    assert v.rotary_cache_bytes == 131072 * 128 * 2  # 32 MiB, as "Model loading took" shows


def test_every_term_names_its_basis() -> None:
    v = vllm("h100", version="0.20.0")
    for key in ("sampler", "forward", "non_torch", "cudagraph", "gpu_memory_utilization"):
        assert v.basis[key]
    assert "0.20.0" in v.basis["cudagraph"] and "vllm/envs.py" in v.basis["cudagraph"]


def test_both_runtimes_plan_with_the_total_torch_reports() -> None:
    h200 = resolve_gpu("h200")
    assert h200.total_bytes == pytest.approx(150_109_880_320, rel=1e-5)  # measured, not NVML's
    hf = estimate(EstimateRequest(gpu=h200, model=resolve_model("qwen3-8b")))
    assert hf.memory.total_bytes == h200.total_bytes
    assert vllm("h200").total_bytes == h200.total_bytes
