"""Next tokens from the sampled rows' logits: greedy, or temperature and top-p per request."""

from __future__ import annotations

import torch

from reference_server.engine.sequence import Sequence

# Below this, logits / temperature overflows to inf and softmax to NaN: sample greedily
# (vLLM's threshold). A fuzzer's temperature of 5e-324 once failed a whole batch.
MIN_TEMPERATURE = 1e-5


def sample(batch: list[Sequence], logits: torch.Tensor) -> list[int]:
    """Greedy rows take the argmax; the others sample with their own generator.

    Temperature, softmax, top-p and the cumulative distribution run batched on the model's
    device; each sampled row then draws one uniform number from its own generator on cpu and
    takes the first token whose cumulative probability passes it (inverse CDF). One draw per
    row, not one per vocabulary entry: `torch.multinomial` draws an exponential for every token,
    8 ms a row with a 151,936-token vocabulary on this cpu, 250 ms for 32 rows.
    """
    tokens: list[int] = logits.argmax(-1).tolist()
    rows = [i for i, s in enumerate(batch) if s.temperature >= MIN_TEMPERATURE]
    if not rows:
        return tokens
    device = logits.device
    index = torch.tensor(rows, device=device)
    temperature = torch.tensor([batch[i].temperature for i in rows], device=device)
    probs = torch.softmax(logits.index_select(0, index).float() / temperature[:, None], dim=-1)
    top_p = [batch[i].top_p for i in rows]
    if min(top_p) < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest head of the distribution whose mass reaches top_p (at least one)
        limit = torch.tensor(top_p, device=device)[:, None]
        outside = sorted_probs.cumsum(-1) - sorted_probs > limit
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(outside, 0))
    cdf = probs.cumsum(-1)
    draws = torch.cat([torch.rand(1, generator=batch[i].generator) for i in rows]).to(device)
    # right=True: a token with no mass (cdf flat across it) is never the first to exceed.
    found = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True)
    picked: list[int] = found.clamp(max=probs.shape[-1] - 1).reshape(-1).tolist()
    for j, i in enumerate(rows):
        tokens[i] = picked[j]
    return tokens
