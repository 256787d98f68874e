"""KV bytes per token equal the bytes a real transformers `DynamicCache` holds after
`generate()` on small real models built from configs: GQA, head_dim != hidden / heads,
q/k/v biases, and sliding windows where transformers implements them."""

from __future__ import annotations

import pytest

from capplan.estimate.kv_cache import kv_bytes_for_context, kv_bytes_per_token
from capplan.estimate.model_spec import spec_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT = 7
NEW_TOKENS = 9

TINY = {
    "num_hidden_layers": 3,
    "hidden_size": 64,
    "intermediate_size": 96,
    "vocab_size": 128,
    "max_position_embeddings": 256,
}

CASES = {
    # GQA (4 q heads share 2 kv heads) and head_dim 32 != hidden 64 / heads 4.
    "qwen3-gqa-wide-heads": (
        "qwen3",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32},
    ),
    "llama-gqa": ("llama", {"num_attention_heads": 8, "num_key_value_heads": 2}),
    "qwen2-bias-gqa": ("qwen2", {"num_attention_heads": 4, "num_key_value_heads": 1}),
    "phi3-mha": ("phi3", {"num_attention_heads": 4, "num_key_value_heads": 4, "pad_token_id": 0}),
    # Every layer windowed at 8 tokens: the cache stops growing at window - 1.
    "mistral-sliding": (
        "mistral",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 8},
    ),
    # Alternate layers windowed, head_dim 48 != 64 / 2.
    "gemma2-alternating": (
        "gemma2",
        {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 48, "sliding_window": 8},
    ),
}


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            if tensor is not None and tensor.numel():
                total += tensor.numel() * tensor.element_size()
    return total


def generate_cache(model_type: str, extra: dict, dtype):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **TINY, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    prompt = torch.randint(1, TINY["vocab_size"], (1, PROMPT))
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    return config, out.past_key_values


@pytest.mark.parametrize("case", list(CASES))
def test_kv_bytes_equal_dynamic_cache_after_generate(case: str) -> None:
    model_type, extra = CASES[case]
    config, cache = generate_cache(model_type, extra, torch.float32)
    spec = spec_from_config(config.to_dict(), case, "test config")
    # generate() never feeds the last new token back, so the cache holds one less.
    cached = PROMPT + NEW_TOKENS - 1
    assert cache.get_seq_length() == cached or spec.has_sliding_window
    assert kv_bytes_for_context(spec, cached, 4) == cache_bytes(cache)


def test_kv_bytes_per_token_in_bf16_equal_cache_growth_per_token() -> None:
    model_type, extra = CASES["qwen3-gqa-wide-heads"]
    config, cache = generate_cache(model_type, extra, torch.bfloat16)
    spec = spec_from_config(config.to_dict(), "qwen3-tiny", "test config")
    held = cache_bytes(cache)
    assert held == (PROMPT + NEW_TOKENS - 1) * kv_bytes_per_token(spec, 2)
    # and the formula is not hidden / heads: 2 x 3 layers x 2 kv heads x 32 x 2 bytes
    assert kv_bytes_per_token(spec, 2) == 2 * 3 * 2 * 32 * 2


def test_sliding_window_caps_the_real_cache() -> None:
    model_type, extra = CASES["mistral-sliding"]
    _, cache = generate_cache(model_type, extra, torch.float32)
    per_layer_tokens = {layer.keys.shape[-2] for layer in cache.layers}
    assert per_layer_tokens == {extra["sliding_window"] - 1}
