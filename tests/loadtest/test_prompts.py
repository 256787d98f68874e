from __future__ import annotations

import json
from pathlib import Path

import pytest

from capplan.errors import InputError
from capplan.loadtest.distributions import parse_distribution
from capplan.loadtest.prompts import FilePrompts, SyntheticPrompts, load_tokenizer


def _synthetic(tokenizer, prompt: object = 100) -> SyntheticPrompts:  # type: ignore[no-untyped-def]
    return SyntheticPrompts(
        parse_distribution(prompt, name="p"), parse_distribution(16, name="m"), tokenizer, seed=1
    )


@pytest.mark.parametrize("n", [1, 7, 100, 513])
def test_embedded_tokenizer_prompts_have_the_exact_length(n: int) -> None:
    tokenizer = load_tokenizer("embedded")
    spec = _synthetic(tokenizer, n).build(0)
    assert spec.prompt_tokens == n
    assert len(tokenizer.encode(spec.prompt)) == n


@pytest.mark.slow
def test_local_tokenizer_directory_with_merges_gives_exact_lengths(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"])
    corpus = ["the model serves requests from memory and the system loads data"] * 50
    core.train_from_iterator(corpus, trainer)
    from tokenizers import decoders

    core.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer is not None
    builder = _synthetic(tokenizer, "uniform:20:200")
    for index in range(20):
        spec = builder.build(index)
        assert len(tokenizer.encode(spec.prompt)) == spec.prompt_tokens


def test_prompts_are_seeded_by_request_index() -> None:
    builder = _synthetic(None, "uniform:10:50")
    assert builder.build(3) == builder.build(3)
    assert builder.build(3).prompt != builder.build(4).prompt
    assert builder.build(0).prompt_tokens is None  # no tokenizer: length approximate, unclaimed


def test_jsonl_prompt_file_with_prompts_messages_and_max_tokens(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "hello there", "max_tokens": 5},
        {"messages": [{"role": "user", "content": "hi"}]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    prompts = FilePrompts(path, parse_distribution(9, name="m"), seed=0)
    specs = {prompts.build(i).prompt: prompts.build(i).max_tokens for i in range(2)}
    assert specs == {"hello there": 5, "hi": 9}


def test_a_bad_prompt_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(InputError, match=r"p.jsonl:2"):
        FilePrompts(path, parse_distribution(9, name="m"), seed=0)


def test_a_missing_tokenizer_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))
