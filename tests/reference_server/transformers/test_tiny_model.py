"""The embedded model: exact tokenization, deterministic weights, loadable as a local directory."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference_server.tiny_model import IM_END, build_model, load_tokenizer, save_tiny_model


def test_tokenizer_gives_one_token_per_ascii_character() -> None:
    tokenizer = load_tokenizer()
    text = "Hello, world!\n\tx = 1 + 2"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_chat_template_ends_on_the_assistant_turn_and_eos_ends_a_turn() -> None:
    tokenizer = load_tokenizer()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False
    )
    text = tokenizer.decode(ids)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == IM_END
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in ids  # one special token, not chars


def test_build_model_gives_the_same_weights_every_time_without_touching_global_rng() -> None:
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    first, second = build_model(), build_model()
    assert torch.equal(torch.rand(1), expected_next)
    assert first.config.model_type == "qwen3"
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_random_model_almost_never_emits_special_tokens() -> None:
    tokenizer, model = load_tokenizer(), build_model()
    ids = torch.tensor([tokenizer.encode("The embedded model writes printable text.")])
    with torch.no_grad():
        probs = model(ids).logits.softmax(-1)
    special = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens]
    assert probs[..., special].max() < 1e-9


def test_saved_tiny_model_loads_as_an_ordinary_local_directory(tmp_path) -> None:
    path = save_tiny_model(tmp_path / "tiny")
    options = {"local_files_only": True, "trust_remote_code": False}
    model = AutoModelForCausalLM.from_pretrained(path, **options)
    tokenizer = AutoTokenizer.from_pretrained(path, **options)
    for a, b in zip(model.parameters(), build_model().parameters(), strict=True):
        assert torch.equal(a, b)
    assert tokenizer.encode("abc") == load_tokenizer().encode("abc")
    assert tokenizer.eos_token == IM_END
    assert tokenizer.chat_template
