"""The fixed-KV engine stepped by hand: greedy tokens equal `generate()`'s however requests join,
leave, queue and are chunked; what can never fit is refused, what cannot fit yet waits."""

from __future__ import annotations

import pytest
import torch

from capplan.estimate.memory_capplan import BLOCK_SIZE, EngineLimits, pool_bytes
from reference_server.engine.attention import attending_to_the_pool
from reference_server.engine.build import build_engine
from reference_server.engine.engine import FixedKvEngine
from reference_server.engine.sequence import RequestTooLarge, Sequence
from reference_server.text_stream import TextStream
from reference_server.tiny_model import BIG_VOCAB, build_model

# (prompt tokens, max_tokens): short and long prompts, one of a single token.
SHAPES = [(37, 12), (5, 20), (300, 9), (130, 15), (1, 7), (64, 30)]


def sequences(vocab: int) -> list[Sequence]:
    generator = torch.Generator().manual_seed(1)
    return [
        Sequence(
            prompt_ids=torch.randint(4, min(vocab, 100), (p,), generator=generator).tolist(),
            max_tokens=m,
            sink=lambda event: None,
            stream=TextStream(lambda ids: ""),
            temperature=0.0,
        )
        for p, m in SHAPES
    ]


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=1
    )
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), generation_config=config)
    return out[0, len(prompt) :].tolist()


def engine_for(model, *, max_batch: int, chunk: int, blocks: int) -> FixedKvEngine:
    limits = EngineLimits(max_batch=max_batch, prefill_chunk_tokens=chunk, max_context=4096)
    per_token = 2 * 2 * 2 * 16 * 4  # layers x K,V x kv_heads x head_dim x fp32
    engine, _ = build_engine(
        model, limits, eos_token_ids=set(), kv_cache_memory=(blocks + 1) * BLOCK_SIZE * per_token
    )
    return engine


def run_staggered(engine: FixedKvEngine, batch: list[Sequence]) -> int:
    """Two sequences at once, then one more every third step; returns the steps taken."""
    pending = list(batch)
    engine.submit(pending.pop(0))
    engine.submit(pending.pop(0))
    steps = 0
    with torch.inference_mode(), attending_to_the_pool(engine.model):
        while engine.has_work() or pending:
            engine.step()
            steps += 1
            if pending and steps % 3 == 0:
                engine.submit(pending.pop(0))
    return steps


@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_greedy_tokens_equal_generate_under_joins_queueing_and_chunks(chunk: int) -> None:
    model = build_model()
    # 3 rows and 40 blocks (640 tokens): the 300-token prompt queues until others leave.
    engine = engine_for(model, max_batch=3, chunk=chunk, blocks=40)
    batch = sequences(model.config.vocab_size)
    run_staggered(engine, batch)
    for sequence in batch:
        expected = greedy_reference(model, sequence.prompt_ids, sequence.max_tokens)
        assert sequence.generated == expected
    assert engine.pool.free_blocks == engine.pool.num_blocks  # every reservation given back
    assert engine.counters.peak_batch == 3


@pytest.mark.slow
def test_greedy_tokens_equal_generate_with_a_151936_token_vocabulary() -> None:
    model = build_model(BIG_VOCAB)
    engine = engine_for(model, max_batch=3, chunk=64, blocks=40)
    batch = sequences(model.config.vocab_size)
    run_staggered(engine, batch)
    for sequence in batch:
        expected = greedy_reference(model, sequence.prompt_ids, sequence.max_tokens)
        assert sequence.generated == expected


def test_a_request_larger_than_the_pool_is_refused_and_one_that_does_not_fit_yet_waits() -> None:
    engine = engine_for(build_model(), max_batch=4, chunk=64, blocks=10)  # 160 tokens
    first, second = sequences(101)[:2]
    first.prompt_ids, first.max_tokens = [5] * 100, 40  # 140 tokens: 9 blocks
    with pytest.raises(RequestTooLarge, match="KV cache holds \\(160 tokens\\)"):
        engine.check(Sequence([5] * 150, 11, first.sink, first.stream))  # 161 tokens
    engine.submit(first)
    engine.submit(second)  # 25 tokens: 2 blocks, not free while the first runs
    with torch.inference_mode(), attending_to_the_pool(engine.model):
        engine.step()
        assert [s is first for s in engine.running] == [True]
        assert list(engine.waiting) == [second]
        while engine.has_work():
            engine.step()
    assert len(first.generated) == 40 and len(second.generated) == 20


def test_the_pool_is_exactly_the_estimators_bytes() -> None:
    engine = engine_for(build_model(), max_batch=4, chunk=64, blocks=10)
    assert engine.pool.nbytes == pool_bytes(engine.pool.shape, 10)
    assert engine.pool.nbytes == (10 + 1) * 16 * 512
