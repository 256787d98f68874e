"""The embedded tiny model's tokenizer: one token per printable ASCII character.

Shared by the reference server (whose embedded model it belongs to) and the load tester (which
builds prompts of an exact token length with it), so neither imports the other. Cheap: imports no
torch model and builds no weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capplan.embedded_model import (
    CHAT_TEMPLATE,
    IM_END,
    IM_START,
    MAX_CONTEXT,
    PAD_TOKEN,
    UNK_TOKEN,
    vocabulary,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def load_tokenizer(vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """The embedded model's tokenizer (a transformers fast tokenizer). `vocab_size` pads its
    vocabulary with tokens `<id>` that text never encodes to (no merges) but that decode, for
    a model with a real checkpoint's vocabulary (tiny_model.build_model(vocab_size=...))."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    vocab.update({f"<{i}>": i for i in range(len(vocab), vocab_size or 0)})
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
