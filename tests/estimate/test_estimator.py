"""The estimate end to end: the seed deployment, budgets, recommendations, alternatives."""

from __future__ import annotations

import pytest

from capplan.errors import InputError
from capplan.estimate.capacity import VllmOptions
from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.model_spec import resolve_model

GIB = 1024**3
MIB = 1024**2


def run(gpu: str = "rtx3080", model: str = "qwen3-8b-int8", **options) -> object:
    return estimate(EstimateRequest(gpu=resolve_gpu(gpu), model=resolve_model(model), **options))


def test_seed_model_takes_8_8_gib_not_7_gb() -> None:
    r = run(prompt_tokens=512, max_tokens=512)
    assert r.weights.total_bytes / GIB == pytest.approx(8.79, abs=0.02)
    assert r.weights.total_bytes > 7e9 * 1.2


def test_seed_request_holds_144_mib_of_kv_not_half_a_gigabyte() -> None:
    r = run(prompt_tokens=512, max_tokens=512)
    assert r.memory.kv_per_token_bytes == 144 * 1024
    assert r.memory.kv_per_request_bytes == 1024 * 144 * 1024


def test_seed_three_concurrent_is_the_zero_margin_ceiling_and_one_is_safe() -> None:
    r = run(prompt_tokens=512, max_tokens=512)
    assert r.fits
    assert r.concurrency == 1
    assert r.zero_margin_concurrency == 3
    assert r.settings.max_concurrent == 1 and r.settings.max_tokens_cap == 512


def test_every_hf_term_adds_up_to_the_device_peak_and_total_memory() -> None:
    m = run(prompt_tokens=512, max_tokens=512).memory
    assert m.allocated_peak_bytes == m.weights_bytes + m.kv_in_use_bytes + m.activation_bytes
    assert m.peak_bytes == m.non_torch_bytes + m.allocated_peak_bytes + m.allocator_reserve_bytes
    assert m.peak_bytes + m.free_bytes == m.total_bytes
    assert m.free_bytes >= m.margin_bytes  # the recommendation keeps the margin free


def test_target_concurrency_answers_the_max_tokens_that_allows_it() -> None:
    r = run(prompt_tokens=256, max_tokens=1024, target_concurrency=2)
    m = r.target_max_tokens
    assert m is not None and 0 < m < 1024
    assert run(prompt_tokens=256, max_tokens=m).concurrency >= 2
    assert run(prompt_tokens=256, max_tokens=m + 1).concurrency < 2


def test_seed_three_concurrent_needs_no_margin_and_shorter_outputs() -> None:
    assert run(prompt_tokens=512, max_tokens=512, target_concurrency=3).target_max_tokens is None
    r = run(prompt_tokens=512, max_tokens=512, target_concurrency=3, margin=0.0)
    # Three fit what is allocated, not what the process holds with the allocator's cache.
    assert r.target_max_tokens is not None and 0 < r.target_max_tokens < 512
    assert r.zero_margin_concurrency == 3 and run(prompt_tokens=512, margin=0.0).concurrency == 2


def test_does_not_fit_says_so_and_offers_alternatives_with_numbers() -> None:
    r = run(model="qwen3-8b")  # bf16 on a 10 GB card
    assert not r.fits
    assert r.verdict.startswith("Does not fit")
    kinds = {a.kind for a in r.alternatives}
    assert {"quantization", "gpu", "gpus"} <= kinds
    assert all(a.concurrency >= 1 for a in r.alternatives)
    gpu_choice = next(a for a in r.alternatives if a.kind == "gpu").change.split()[-1]
    assert run(gpu=gpu_choice, model="qwen3-8b").fits
    quant_choice = next(a for a in r.alternatives if a.kind == "quantization").change
    assert run(model="qwen3-8b-" + quant_choice.split()[-1]).fits


def test_does_not_fit_lists_every_kind_of_fix_with_numbers_that_hold() -> None:
    # The seed card with 4096 output tokens: the KV of one request no longer fits.
    r = run(prompt_tokens=512, max_tokens=4096)
    assert not r.fits
    by_kind: dict[str, list] = {}
    for alternative in r.alternatives:
        by_kind.setdefault(alternative.kind, []).append(alternative)
    assert {"quantization", "max_tokens", "gpu", "gpus"} <= set(by_kind)
    for a in by_kind["quantization"]:
        fixed = run(model="qwen3-8b-" + a.change.split()[-1], prompt_tokens=512, max_tokens=4096)
        assert fixed.concurrency == a.concurrency >= 1
    shorter = int(by_kind["max_tokens"][0].change.split()[-1])
    assert run(prompt_tokens=512, max_tokens=shorter).fits
    assert not run(prompt_tokens=512, max_tokens=shorter + 1).fits
    gpu = by_kind["gpu"][0].change.split()[-1]
    assert (
        run(gpu=gpu, prompt_tokens=512, max_tokens=4096).concurrency
        == by_kind["gpu"][0].concurrency
    )
    tp = int(by_kind["gpus"][0].change.split()[-1])
    more = run(prompt_tokens=512, max_tokens=4096, gpus=tp, tp=tp)
    assert more.concurrency == by_kind["gpus"][0].concurrency >= 1


def test_vllm_budget_reports_what_vllm_logs() -> None:
    options = VllmOptions(max_model_len=8192, version="0.12.0")
    r = run(gpu="rtx3090", model="qwen3-8b", runtime="vllm", vllm=options)
    v = r.vllm
    assert v.kv_cache_tokens % 16 == 0
    assert v.gpu_memory_utilization == 0.9  # releases before 0.20.0 (vllm/config/cache.py)
    # Native sampler: 256 rows x vocab x 38 B, plus the 2048 scheduled tokens' hidden states.
    assert v.sampler_bytes == 256 * 151936 * 38 + 2048 * 4096 * 2
    assert v.activation_bytes == max(v.sampler_bytes, v.forward_bytes) == v.sampler_bytes
    assert v.cudagraph_bytes == 0  # not subtracted before 0.20.0
    rotary = 40960 * 128 * 2
    budget = (
        int(23.58 * GIB * 0.9)
        - r.weights.total_bytes
        - rotary
        - v.activation_bytes
        - v.non_torch_bytes
    )
    # get_num_blocks: available // page_size // layers, page = 2 x 16 x kv_heads x head_dim x 2 B
    num_blocks = budget // (2 * 16 * 8 * 128 * 2) // 36
    assert v.kv_cache_tokens == num_blocks * 16
    assert v.max_concurrency_full_length == pytest.approx(num_blocks / (8192 // 16))
    assert r.concurrency == min(v.max_num_seqs, v.kv_cache_tokens // 1024)


def test_vllm_default_is_the_newest_release_and_says_so() -> None:
    r = run(gpu="rtx3090", model="qwen3-8b", runtime="vllm", vllm=VllmOptions(max_model_len=8192))
    v = r.vllm
    assert v.version_is_default and v.version == "0.33.x" and v.gpu_memory_utilization == 0.92
    assert v.runner == "v2" and v.cudagraph_bytes > 0
    assert any("0.33.x" in a and "V2 model runner" in a for a in r.assumptions)


def test_vllm_max_concurrency_counts_whole_pages_as_vllm_does() -> None:
    # max_model_len 1000 needs cdiv(1000, 16) = 63 pages: vLLM divides blocks by 63, not 62.5.
    options = VllmOptions(max_model_len=1000)
    r = run(gpu="rtx3090", model="qwen3-8b", runtime="vllm", max_tokens=488, vllm=options)
    v = r.vllm
    assert v.max_concurrency_full_length == pytest.approx((v.kv_cache_tokens // 16) / 63)
    assert r.concurrency == min(v.max_num_seqs, (v.kv_cache_tokens // 16) // 63)


def test_vllm_refuses_to_start_when_one_full_length_sequence_does_not_fit() -> None:
    older = VllmOptions(gpu_memory_utilization=0.9)
    r = run(gpu="rtx3090", model="qwen3-8b", runtime="vllm", vllm=older)
    v = r.vllm
    assert not v.starts and not r.fits and "refuse to start" in r.verdict
    fix = next(a for a in r.alternatives if a.kind == "max_model_len")
    length = int(fix.change.split()[-1])
    assert length == v.kv_cache_tokens
    options = VllmOptions(gpu_memory_utilization=0.9, max_model_len=length)
    fixed = run(gpu="rtx3090", model="qwen3-8b", runtime="vllm", vllm=options)
    assert fixed.vllm.starts and fixed.concurrency == fix.concurrency >= 1


def test_target_concurrency_under_vllm_answers_within_max_model_len() -> None:
    options = VllmOptions(max_model_len=4096)
    r = run(gpu="rtx3090", model="qwen3-8b", runtime="vllm", vllm=options, target_concurrency=40)
    m = r.target_max_tokens
    assert m is not None and m <= 4096 - 512
    assert (
        run(gpu="rtx3090", model="qwen3-8b", runtime="vllm", vllm=options, max_tokens=m).concurrency
        >= 40
    )
    if m < 4096 - 512:
        over = run(gpu="rtx3090", model="qwen3-8b", runtime="vllm", vllm=options, max_tokens=m + 1)
        assert over.concurrency < 40


def test_tensor_parallel_splits_kv_heads_and_replicates_when_ranks_outnumber_them() -> None:
    two = run(gpu="h100", model="llama-3.1-70b", gpus=2, tp=2)
    assert two.memory.kv_per_token_bytes == 2 * 80 * (8 // 2) * 128 * 2
    sixteen = run(gpu="h100", model="llama-3.1-70b", gpus=16, tp=16)
    assert sixteen.memory.kv_per_token_bytes == 2 * 80 * 1 * 128 * 2  # 8 heads, 16 ranks
    with pytest.raises(InputError, match="4 KV heads; --tp must divide them or be a multiple"):
        run(gpu="h100", model="qwen2.5-7b", gpus=7, tp=7)  # 28 heads split, 4 KV heads do not


def test_tensor_parallel_and_replicas_multiply_capacity() -> None:
    one = run(gpu="a100-80", model="llama-3.1-70b-fp8")
    four = run(gpu="a100-80", model="llama-3.1-70b-fp8", gpus=4, tp=2)
    assert four.workload.replicas == 2
    assert four.weights.total_bytes == pytest.approx(one.weights.total_bytes / 2, rel=1e-6)
    assert four.total_concurrency == 2 * four.concurrency > one.concurrency


def test_sliding_window_caps_kv_per_request() -> None:
    short = run(gpu="a100-80", model="mistral-7b", prompt_tokens=2000, max_tokens=1000)
    long = run(gpu="a100-80", model="mistral-7b", prompt_tokens=20000, max_tokens=1000)
    assert long.memory.kv_per_request_bytes == 32 * 4095 * 2 * 8 * 128 * 2
    assert short.memory.kv_per_request_bytes == 32 * 3000 * 2 * 8 * 128 * 2


def test_roofline_int8_decode_is_slower_and_concurrency_raises_throughput() -> None:
    # vLLM replays CUDA graphs (no host floor), so the kernels' own speed shows.
    int8 = run(gpu="rtx3090", model="qwen3-8b-int8", runtime="vllm").timing
    awq = run(gpu="rtx3090", model="qwen3-8b-awq", runtime="vllm").timing
    assert int8.decode_ms_per_token_c1 > 2 * awq.decode_ms_per_token_c1
    assert awq.output_tokens_per_s_at_concurrency > awq.output_tokens_per_s_c1


def test_eager_generate_is_bound_by_the_hosts_floor_not_the_roofline() -> None:
    # Measured on the H200: 70-85 ms a step for a 36-layer model whatever the batch, where the
    # memory roofline says 4-8 ms (shared/facts/gpu-2026-11-30).
    t = run(gpu="h200", model="qwen3-8b", concurrency=16).timing
    assert t.decode_bound == "floor" and not t.calibrated
    assert 70 < t.decode_ms_per_token_c1 < 80
    assert "uncalibrated" in t.basis and "capplan calibrate" in t.basis


def test_defaults_are_stated() -> None:
    r = run()
    assert r.workload.prompt_tokens_is_default and r.workload.max_tokens_is_default
    assert any("(default)" in a for a in r.assumptions)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"runtime": "trt"}, "choose hf, vllm or capplan"),
        ({"tp": 3, "gpus": 3}, "must divide"),
        ({"gpus": 3, "tp": 2}, "multiple of --tp"),
        ({"max_tokens": 50000}, "exceeds"),
        ({"margin": 0.9}, "--margin"),
        ({"vllm": VllmOptions(max_model_len=4096)}, "applies to --runtime vllm"),
        ({"vllm": VllmOptions(version="0.9.2", enforce_eager=True)}, "apply to --runtime vllm"),
        ({"runtime": "vllm", "vllm": VllmOptions(version="0.7.3")}, "knows vLLM 0.8.0 to"),
        ({"runtime": "vllm", "vllm": VllmOptions(version="0.9")}, "malformed --vllm-version"),
        ({"runtime": "vllm", "vllm": VllmOptions(max_model_len=50000)}, "exceeds qwen3-8b's"),
        ({"runtime": "vllm", "vllm": VllmOptions(max_model_len=600)}, "exceeds --max-model-len"),
        ({"runtime": "vllm", "vllm": VllmOptions(max_num_batched_tokens=0)}, "at least 1"),
    ],
)
def test_bad_options_raise_one_line_input_errors(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        run(**options)
    assert "\n" not in str(info.value)


def test_cpu_inference_plans_workers_by_cores_and_ram() -> None:
    cpu = resolve_gpu("cpu", vram="64GiB", cores=16)
    r = estimate(EstimateRequest(gpu=cpu, model=resolve_model("qwen3-4b")))
    assert r.settings.workers == r.workload.replicas == 2  # one per 8 cores, both fit in RAM
    assert r.memory.total_bytes == 32 * GIB  # each worker's share
    small = resolve_gpu("cpu", vram="12GiB", cores=16)
    assert (
        estimate(EstimateRequest(gpu=small, model=resolve_model("qwen3-4b"))).settings.workers == 1
    )


def test_max_concurrent_stops_where_decode_turns_compute_bound() -> None:
    # vLLM: no host floor, a 4-bit 4B model on 141 GB: memory allows far more than compute.
    r = run(gpu="h200", model="qwen3-4b-awq", runtime="vllm", max_tokens=128)
    assert r.concurrency == r.compute_bound_batch
    assert r.concurrency_bound.startswith("compute")
    assert r.settings.max_concurrent == r.compute_bound_batch
    seed = run()
    assert seed.settings.max_concurrent == seed.concurrency < seed.compute_bound_batch
    assert seed.concurrency_bound.startswith("memory")


def test_cpu_runtime_must_be_hf() -> None:
    with pytest.raises(InputError, match="--runtime hf"):
        estimate(
            EstimateRequest(
                gpu=resolve_gpu("cpu", vram="64GiB", cores=8),
                model=resolve_model("qwen3-4b"),
                runtime="vllm",
            )
        )


def test_vllm_alternatives_pair_a_change_with_the_max_model_len_it_needs() -> None:
    r = run(runtime="vllm")  # seed int8 under vLLM: no KV cache left at all
    assert not r.fits
    quant = next(a for a in r.alternatives if a.kind == "quantization")
    words = quant.change.split()
    assert words[0] == "--quant" and words[2] == "--max-model-len"
    options = VllmOptions(max_model_len=int(words[3]))
    fixed = run(model="qwen3-8b-" + words[1], runtime="vllm", vllm=options)
    assert fixed.vllm.starts and fixed.concurrency == quant.concurrency >= 1
