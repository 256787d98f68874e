"""The embedded tiny model's tokenizer: one token per printable ASCII character.

Shared by the reference server (whose embedded model it belongs to) and the load tester (which
builds prompts of an exact token length with it), so neither imports the other. Cheap: imports no
torch model and builds no weights.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

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


def load_tokenizer() -> PreTrainedTokenizerFast:
    """The embedded model's tokenizer (a transformers fast tokenizer)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    # No merges: BPE over single characters, so one character is one token.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        additional_special_tokens=[IM_START],
        padding_side="left",
        model_max_length=MAX_CONTEXT,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
