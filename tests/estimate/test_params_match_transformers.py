"""Parameter counts equal `sum(p.numel())` of real transformers models built from each catalog
family's config (on the meta device: no memory, no weights)."""

from __future__ import annotations

import pytest

from capplan.catalog import loader
from capplan.estimate.architecture import parameter_count
from capplan.estimate.model_spec import spec_from_entry

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_config(entry: loader.ModelEntry):
    """The transformers config the catalog row stands for (its config.json fields)."""
    fields = {
        "num_hidden_layers": entry.layers,
        "hidden_size": entry.hidden,
        "intermediate_size": entry.intermediate,
        "num_attention_heads": entry.heads,
        "num_key_value_heads": entry.kv_heads,
        "vocab_size": entry.vocab,
        "tie_word_embeddings": entry.tied_embeddings,
        "max_position_embeddings": entry.max_positions,
    }
    if entry.head_dim is not None:
        fields["head_dim"] = entry.head_dim
    if entry.sliding_window is not None:
        fields["sliding_window"] = entry.sliding_window
    if entry.model_type == "phi3":
        fields["pad_token_id"] = 0
    return transformers.AutoConfig.for_model(entry.model_type, **fields)


def real_param_count(entry: loader.ModelEntry) -> int:
    config = hf_config(entry)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_id", list(loader.models()))
def test_parameter_count_equals_real_transformers_model(model_id: str) -> None:
    entry = loader.model(model_id)
    spec = spec_from_entry(entry)
    assert parameter_count(spec) == real_param_count(entry)


@pytest.mark.parametrize("model_id", list(loader.models()))
def test_parameter_count_equals_published_count(model_id: str) -> None:
    entry = loader.model(model_id)
    assert parameter_count(spec_from_entry(entry)) == entry.params
