"""The embedded default model: a real transformers Qwen3 model, tiny, with seeded random weights.

It needs no hub and no files: the tokenizer is character-level (one token per printable ASCII
character, so a load tester can build prompts of an exact token length) and the weights come from
a fixed seed, so every run of every machine with the same torch build produces the same model.
Its text is gibberish; its shapes, cache, batching and streaming are those of a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from capplan.embedded_model import (
    IM_END,
    IM_START,
    PAD_TOKEN,
    TINY_CONFIG,
    UNK_TOKEN,
    vocabulary,
)
from capplan.embedded_tokenizer import load_tokenizer

if TYPE_CHECKING:
    from transformers import Qwen3ForCausalLM

SEED = 20240611
# Qwen2/Qwen3's vocabulary: `build_model(vocab_size=BIG_VOCAB)` has a real checkpoint's logits
# and sampling cost (the head and the softmax over 151,936 tokens) on the tiny body.
BIG_VOCAB = 151_936

# The residual stream carries this constant in dimension 0 and the head rows of the special tokens
# (eos among them) read it negatively, so the random model (almost) never emits one: every token is
# one visible character and generations run to max_tokens, which is what a load test wants. Stop
# strings still end them early.
_SPECIAL_SUPPRESSION = 8.0
_SPECIAL_TOKENS = (UNK_TOKEN, PAD_TOKEN, IM_START, IM_END)


def build_model(vocab_size: int | None = None) -> Qwen3ForCausalLM:
    """The embedded model with its seeded weights, in eval mode on cpu (float32); with
    `vocab_size`, the same body with a larger vocabulary (the extra tokens decode as `<id>`)."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    vocab = vocabulary()
    eos_id = vocab.index(IM_END)
    config = Qwen3Config(
        vocab_size=max(len(vocab), vocab_size or 0),
        pad_token_id=vocab.index(PAD_TOKEN),
        eos_token_id=eos_id,
        bos_token_id=None,
        **TINY_CONFIG,  # type: ignore[arg-type]
    )
    # fork_rng: seeding must not disturb the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen3ForCausalLM(config)
        with torch.no_grad():
            embed = model.model.embed_tokens.weight
            embed.normal_(0.0, 1.0)
            embed[:, 0] = _SPECIAL_SUPPRESSION
            head = model.lm_head.weight
            head.normal_(0.0, 1.0)
            head[:, 0] = 0.0
            for token in _SPECIAL_TOKENS:
                row = vocab.index(token)
                head[row].zero_()
                head[row, 0] = -_SPECIAL_SUPPRESSION
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=config.pad_token_id, do_sample=True
    )
    return model.eval()


def save_tiny_model(directory: str | Path, vocab_size: int | None = None) -> Path:
    """Write the embedded model as an ordinary local model directory (config, weights, vocab)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    build_model(vocab_size).save_pretrained(path)
    load_tokenizer(vocab_size).save_pretrained(path)
    return path
