"""--model: catalog ids with suffixes, HF ids, local config.json files and directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capplan.errors import InputError
from capplan.estimate.model_spec import resolve_model


def test_suffix_selects_the_quantization() -> None:
    r = resolve_model("qwen3-8b-int8")
    assert (r.spec.id, r.quant.name, r.quant_source) == ("qwen3-8b", "int8", "suffix")
    assert resolve_model("llama-3.1-8b-awq").quant.name == "awq"
    assert resolve_model("qwen3-8b").quant.name == "bf16"


def test_quant_option_overrides_the_suffix() -> None:
    r = resolve_model("qwen3-8b-int8", quant="nf4")
    assert (r.quant.name, r.quant_source) == ("nf4", "--quant")


def test_hf_id_from_the_catalog_resolves() -> None:
    assert resolve_model("Qwen/Qwen3-8B").spec.id == "qwen3-8b"


def test_unknown_model_names_the_closest_ids() -> None:
    with pytest.raises(InputError, match="unknown model 'qwen3-8x'; did you mean qwen3-8b"):
        resolve_model("qwen3-8x-int8")


def test_model_directory_is_read_offline_with_its_quantization(tmp_path: Path) -> None:
    config = {
        "model_type": "qwen3",
        "num_hidden_layers": 36,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
        "max_position_embeddings": 40960,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "awq", "group_size": 64},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    r = resolve_model(str(tmp_path))
    assert r.quant.name == "awq" and r.quant.group_size == 64
    assert r.quant_source == "config.json"
    catalog = resolve_model("qwen3-8b").spec
    assert (r.spec.layers, r.spec.head_dim, r.spec.qk_norm) == (36, 128, catalog.qk_norm)


def test_missing_path_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such model file"):
        resolve_model(str(tmp_path / "nope" / "config.json"))


def test_config_without_required_fields_is_an_input_error(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InputError, match=r"not a decoder config\.json"):
        resolve_model(str(file))
