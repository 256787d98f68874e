"""The embedded tiny model as data: its config, vocabulary and chat template (no torch here).

The reference server builds the real transformers model from it (`reference_server.tiny_model`),
the load tester builds exact-length prompts with its tokenizer (`capplan.embedded_tokenizer`), and
the estimator plans for it (`--model embedded`), each from this one definition.
"""

from __future__ import annotations

import string
from typing import Any

MODEL_ID = "capplan-tiny-qwen3"
ALIASES = ("embedded", MODEL_ID)
MAX_CONTEXT = 4096

UNK_TOKEN = "<unk>"
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of turn: the eos token, as in Qwen chat checkpoints

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def vocabulary() -> list[str]:
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]  # printable ASCII, \t and \n
    return [UNK_TOKEN, PAD_TOKEN, IM_START, IM_END, *chars]


# Small enough that CPU generation takes about a millisecond a step, shaped like Qwen3
# (grouped-query attention, q/k norms, untied head).
TINY_CONFIG: dict[str, int | float | bool | str] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": MAX_CONTEXT,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attn_implementation": "sdpa",
}


def config_json() -> dict[str, Any]:
    """The model's config.json fields, as `save_pretrained` would write them (float32)."""
    vocab = vocabulary()
    return {
        "model_type": "qwen3",
        "vocab_size": len(vocab),
        "pad_token_id": vocab.index(PAD_TOKEN),
        "eos_token_id": vocab.index(IM_END),
        "torch_dtype": "float32",
        **{k: v for k, v in TINY_CONFIG.items() if k != "attn_implementation"},
    }
