"""Storage rules per scheme: which tensors stay 16-bit, and what scales and zeros cost."""

from __future__ import annotations

import pytest

from capplan.errors import InputError
from capplan.estimate.architecture import parameters_by_role
from capplan.estimate.model_spec import resolve_model
from capplan.estimate.quantization import parse_quant, weight_storage


def qwen3_8b():
    return resolve_model("qwen3-8b").spec


def test_bnb_int8_keeps_embeddings_and_lm_head_16bit_with_fp32_row_scales() -> None:
    spec = qwen3_8b()
    roles = parameters_by_role(spec)
    storage = weight_storage(spec, parse_quant("int8"))
    rows_per_layer = 4096 + 1024 + 1024 + 4096 + 12288 + 12288 + 4096
    assert storage.quantized_params == roles["linear"]
    assert storage.scale_bytes == rows_per_layer * 36 * 4
    kept = roles["embedding"] + roles["lm_head"] + roles["norm"]
    assert storage.unquantized_bytes == kept * 2
    assert storage.total_bytes == roles["linear"] + rows_per_layer * 36 * 4 + kept * 2


def test_naive_int8_estimate_is_about_13_percent_low_for_qwen3_8b() -> None:
    storage = weight_storage(qwen3_8b(), parse_quant("int8"))
    assert 1 - storage.naive_bytes / storage.total_bytes == pytest.approx(0.13, abs=0.01)


def test_gptq_and_awq_group_128_cost_about_052_bytes_per_quantized_param() -> None:
    spec = qwen3_8b()
    for name in ("gptq", "awq"):
        s = weight_storage(spec, parse_quant(name))
        per_param = (s.quantized_data_bytes + s.scale_bytes) / s.quantized_params
        assert per_param == pytest.approx(0.52, abs=0.005)
    gptq = weight_storage(spec, parse_quant("gptq"))
    awq = weight_storage(spec, parse_quant("awq"))
    assert gptq.scale_bytes > awq.scale_bytes  # g_idx


def test_smaller_groups_cost_more_scales() -> None:
    spec = qwen3_8b()
    g32 = weight_storage(spec, parse_quant("awq", group_size=32))
    g128 = weight_storage(spec, parse_quant("awq", group_size=128))
    assert g32.scale_bytes == pytest.approx(4 * g128.scale_bytes, rel=0.01)


def test_nf4_absmax_per_64_values_and_double_quant_shrinks_it() -> None:
    spec = qwen3_8b()
    plain = weight_storage(spec, parse_quant("nf4", double_quant=False))
    double = weight_storage(spec, parse_quant("nf4", double_quant=True))
    linear = plain.quantized_params
    assert plain.quantized_data_bytes == linear // 2
    assert plain.scale_bytes == pytest.approx(linear / 64 * 4, rel=1e-4)
    # uint8 absmax per 64 values, plus an fp32 absmax per 256 of those
    assert double.scale_bytes == pytest.approx(linear / 64 * (1 + 4 / 256), rel=0.005)
    assert double.total_bytes < plain.total_bytes


def test_fp8_is_one_byte_per_linear_weight_with_16bit_embeddings() -> None:
    spec = qwen3_8b()
    s = weight_storage(spec, parse_quant("fp8"))
    roles = parameters_by_role(spec)
    assert s.quantized_data_bytes == roles["linear"]
    assert s.unquantized_bytes == (roles["embedding"] + roles["lm_head"] + roles["norm"]) * 2


def test_dense_dtypes_are_plain_bytes_per_param() -> None:
    spec = qwen3_8b()
    assert weight_storage(spec, parse_quant("bf16")).total_bytes == 2 * 8_190_735_360
    assert weight_storage(spec, parse_quant("fp32")).total_bytes == 4 * 8_190_735_360


def test_tensor_parallel_splits_weights_per_rank() -> None:
    spec = qwen3_8b()
    full = weight_storage(spec, parse_quant("bf16")).total_bytes
    assert weight_storage(spec, parse_quant("bf16"), tp=2).total_bytes == full // 2


def test_unknown_scheme_names_the_choices() -> None:
    with pytest.raises(InputError, match=r"choose one of .*nf4"):
        parse_quant("int3")
