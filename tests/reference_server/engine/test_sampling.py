"""Sampling: frequencies follow the softmax, top-p cuts the tail, a seed repeats its draws."""

from __future__ import annotations

import math

import torch

from reference_server.engine.sampling import sample
from reference_server.engine.sequence import Sequence
from reference_server.text_stream import TextStream


def sequence(**fields) -> Sequence:
    return Sequence([1], 1, lambda event: None, TextStream(lambda ids: ""), **fields)


def draws(seq: Sequence, logits: torch.Tensor, n: int) -> list[int]:
    return [sample([seq], logits[None])[0] for _ in range(n)]


def test_draws_follow_the_softmax_of_the_scaled_logits() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0, -30.0])
    picked = draws(sequence(temperature=1.0, seed=3), logits, 4000)
    expected = torch.softmax(logits, -1).tolist()
    for token in range(3):
        share = picked.count(token) / len(picked)
        sigma = math.sqrt(expected[token] * (1 - expected[token]) / len(picked))
        assert abs(share - expected[token]) < 5 * sigma
    assert 3 not in picked  # e^-30 of the mass


def test_top_p_never_draws_outside_the_nucleus() -> None:
    logits = torch.tensor([3.0, 2.9, 0.0, 0.0, 0.0])  # the first two hold 0.93 of the mass
    picked = draws(sequence(temperature=1.0, top_p=0.5, seed=1), logits, 500)
    assert set(picked) <= {0, 1} and len(set(picked)) == 2


def test_a_seed_repeats_its_draws_whatever_shares_the_batch() -> None:
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    alone = [sample([sequence(temperature=0.8, seed=7)], logits[1:2])[0] for _ in range(1)]
    batch = [sequence(temperature=1.0, seed=1), sequence(temperature=0.8, seed=7), sequence()]
    assert sample(batch, logits)[1] == alone[0]
    assert sample([sequence(temperature=0.0)], logits[:1]) == [int(logits[0].argmax())]
