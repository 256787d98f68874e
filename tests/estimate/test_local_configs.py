"""`--model DIR`: config.json files written by transformers' own config classes
(`save_pretrained`), for every catalog family and the variants found on the Hub, read back
offline. The parameter count must equal the real model's, the windows transformers' own,
and the quantization what `quantization_config` declares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capplan.errors import InputError
from capplan.estimate.architecture import parameter_count
from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.model_spec import resolve_model
from capplan.estimate.quantization import parse_quant, weight_storage

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = {
    "num_hidden_layers": 4,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
}

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2-biases": ("Qwen2Config", {}),
    "qwen3-qk-norm-wide-heads": ("Qwen3Config", {"head_dim": 64}),
    "llama-untied": ("LlamaConfig", {"tie_word_embeddings": False}),
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True}),
    "llama-attention-and-mlp-bias": ("LlamaConfig", {"attention_bias": True, "mlp_bias": True}),
    "mistral-no-window": ("MistralConfig", {"sliding_window": None}),
    "mistral-window": ("MistralConfig", {"sliding_window": 1024}),
    "gemma2": ("Gemma2Config", {"head_dim": 64, "sliding_window": 512}),
    "phi3": ("Phi3Config", {"num_key_value_heads": 8, "pad_token_id": 0, "sliding_window": 2047}),
}


def save(tmp_path: Path, class_name: str, extra: dict[str, Any], **edits: Any):
    config = getattr(transformers, class_name)(**{**SMALL, **extra})
    config.save_pretrained(tmp_path)
    file = tmp_path / "config.json"
    data = json.loads(file.read_text())
    data.update(edits)
    file.write_text(json.dumps(data))
    return config


def real_param_count(config) -> int:
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def real_windows(config) -> tuple:
    """Per layer: the window transformers' cache applies, or None."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types:
        return tuple(window if t == "sliding_attention" else None for t in types)
    return (window,) * config.num_hidden_layers


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_saved_config_matches_the_real_model(tmp_path: Path, variant: str) -> None:
    class_name, extra = VARIANTS[variant]
    config = save(tmp_path, class_name, extra)
    r = resolve_model(str(tmp_path))
    assert parameter_count(r.spec) == real_param_count(config)
    assert r.spec.layer_windows == real_windows(config)
    assert r.spec.head_dim == (getattr(config, "head_dim", None) or 256 // 8)
    assert r.spec.kv_heads == config.num_key_value_heads
    assert (r.quant_source, r.quant.name) == ("native dtype", r.spec.dtype)


@pytest.mark.parametrize("key", ["torch_dtype", "dtype"])
def test_float32_config_plans_fp32_weights_and_kv(tmp_path: Path, key: str) -> None:
    save(tmp_path, "LlamaConfig", {}, **{key: "float32"})
    r = resolve_model(str(tmp_path))
    assert r.quant.name == "fp32"
    result = estimate(EstimateRequest(gpu=resolve_gpu("rtx3090"), model=r))
    assert result.workload.kv_dtype == "fp32"
    assert result.weights.total_bytes == 4 * parameter_count(r.spec)


def test_gptq_config_sets_bits_group_and_g_idx(tmp_path: Path) -> None:
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": True}
    save(tmp_path, "Qwen2Config", {}, quantization_config=qc)
    r = resolve_model(str(tmp_path))
    assert (r.quant.name, r.quant.weight_bits, r.quant.group_size) == ("gptq", 4, 128)
    assert r.quant_source == "config.json"
    awq = weight_storage(r.spec, parse_quant("awq"))
    gptq = weight_storage(r.spec, r.quant)
    assert gptq.total_bytes > awq.total_bytes  # g_idx: one int32 per input of every Linear


def test_gptq_8bit_and_per_channel_groups_are_sized_by_their_bits(tmp_path: Path) -> None:
    qc = {"quant_method": "gptq", "bits": 8, "group_size": -1}
    save(tmp_path, "LlamaConfig", {}, quantization_config=qc)
    r = resolve_model(str(tmp_path))
    assert (r.quant.weight_bits, r.quant.group_size) == (8, -1)
    four = weight_storage(r.spec, parse_quant("gptq", group_size=-1))
    eight = weight_storage(r.spec, r.quant)
    assert eight.quantized_data_bytes == 2 * four.quantized_data_bytes


def test_awq_config_group_size_is_honoured(tmp_path: Path) -> None:
    qc = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"}
    save(tmp_path, "MistralConfig", {}, quantization_config=qc)
    r = resolve_model(str(tmp_path))
    assert (r.quant.name, r.quant.group_size) == ("awq", 64)


def test_bnb_4bit_double_quant_comes_from_the_config(tmp_path: Path) -> None:
    qc = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4"
    ).to_dict()
    save(tmp_path, "LlamaConfig", {}, quantization_config=qc)
    r = resolve_model(str(tmp_path))
    assert (r.quant.name, r.quant.double_quant) == ("nf4", True)
    plain = dict(qc, bnb_4bit_use_double_quant=False)
    save(tmp_path, "LlamaConfig", {}, quantization_config=plain)
    single = resolve_model(str(tmp_path)).quant
    assert single.double_quant is False
    assert resolve_model(str(tmp_path), double_quant=True).quant.double_quant is True
    spec = r.spec
    assert weight_storage(spec, r.quant).scale_bytes < weight_storage(spec, single).scale_bytes


def test_bnb_8bit_config_is_int8(tmp_path: Path) -> None:
    qc = transformers.BitsAndBytesConfig(load_in_8bit=True).to_dict()
    save(tmp_path, "Qwen3Config", {}, quantization_config=qc)
    assert resolve_model(str(tmp_path)).quant.name == "int8"


def test_quant_option_overrides_the_config(tmp_path: Path) -> None:
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    save(tmp_path, "LlamaConfig", {}, quantization_config=qc)
    r = resolve_model(str(tmp_path), quant="bf16")
    assert (r.quant.name, r.quant_source) == ("bf16", "--quant")
    awq = resolve_model(str(tmp_path), quant="awq")
    assert awq.quant.group_size == 32  # the config's group size still applies


def test_compressed_tensors_fp8_is_fp8(tmp_path: Path) -> None:
    qc = {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}},
    }
    save(tmp_path, "LlamaConfig", {}, quantization_config=qc)
    assert resolve_model(str(tmp_path)).quant.name == "fp8"


def test_unknown_quant_method_is_an_error_not_silently_16_bit(tmp_path: Path) -> None:
    save(tmp_path, "LlamaConfig", {}, quantization_config={"quant_method": "hqq"})
    with pytest.raises(InputError, match="quant_method 'hqq' is not modelled; pass --quant"):
        resolve_model(str(tmp_path))
    assert resolve_model(str(tmp_path), quant="nf4").quant.name == "nf4"
