"""TransformersBackend on the embedded model: counts, stop, length, sampling, batching,
cancellation, the KV pool, OOM."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from capplan.errors import InputError
from reference_server.backend import Backend, BackendOutOfMemory, GenerationRequest, TokenDelta
from reference_server.tiny_model import build_model
from reference_server.transformers_backend import TransformersBackend

PROMPT = "The capacity plan for Tuesday:"


def request(backend: TransformersBackend, **fields) -> GenerationRequest:
    fields.setdefault("prompt_ids", backend.encode(PROMPT))
    fields.setdefault("max_tokens", 12)
    return GenerationRequest(**fields)


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_backend_implements_the_protocol_and_labels_itself(shared_backend) -> None:
    assert isinstance(shared_backend, Backend)
    info = shared_backend.info
    assert (info.name, info.model_id, info.device) == ("transformers", "capplan-tiny-qwen3", "cpu")
    assert info.max_context == 4096


def test_token_counts_are_exact_and_length_ends_at_max_tokens(shared_backend, run_request) -> None:
    req = request(shared_backend, max_tokens=23)
    deltas, finished = run_request(shared_backend, req)
    assert finished.finish_reason == "length"
    assert finished.prompt_tokens == len(req.prompt_ids) == len(PROMPT)
    assert finished.completion_tokens == 23
    assert sum(d.n_tokens for d in deltas) == 23
    # one character per token: the text is token-by-token, every delta one token
    assert all(d.n_tokens == 1 and len(d.text) == 1 for d in deltas)
    assert len(shared_backend.encode("".join(d.text for d in deltas))) == 23


def test_stop_string_ends_with_stop_and_cuts_the_text(shared_backend, run_request) -> None:
    deltas, _ = run_request(shared_backend, request(shared_backend, max_tokens=30, seed=3))
    text = "".join(d.text for d in deltas)
    stop = text[10:12]
    cut = text.index(stop)
    deltas, finished = run_request(
        shared_backend, request(shared_backend, max_tokens=30, seed=3, stop=(stop, "\x00never"))
    )
    assert finished.finish_reason == "stop"
    assert "".join(d.text for d in deltas) == text[:cut]
    assert finished.completion_tokens == cut + len(stop)  # the stop string's tokens were generated


def test_eos_token_ends_with_stop_and_is_counted(
    make_backend, shared_backend, run_request, tmp_path
) -> None:
    from transformers import GenerationConfig

    from reference_server.tiny_model import save_tiny_model

    deltas, _ = run_request(shared_backend, request(shared_backend, max_tokens=8, temperature=0))
    third = shared_backend.encode(deltas[2].text)[0]
    # A model directory whose generation config names the model's own third token as its eos.
    directory = save_tiny_model(tmp_path / "eos-model")
    GenerationConfig(eos_token_id=third, pad_token_id=1).save_pretrained(directory)
    backend = make_backend(model_dir=str(directory))
    deltas, finished = run_request(backend, request(backend, max_tokens=8, temperature=0.0))
    assert finished.finish_reason == "stop"
    assert finished.completion_tokens == 3
    assert len("".join(d.text for d in deltas)) == 2


def test_same_seed_same_text_other_seed_other_text(shared_backend, run_request) -> None:
    texts = [
        "".join(d.text for d in run_request(shared_backend, request(shared_backend, seed=s))[0])
        for s in (11, 11, 12)
    ]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_temperature_zero_matches_transformers_greedy_generate(shared_backend, run_request) -> None:
    ids = shared_backend.encode(PROMPT)
    deltas, _ = run_request(shared_backend, request(shared_backend, max_tokens=20, temperature=0))
    with torch.no_grad():
        output = build_model().generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    reference = output[0, len(ids) :]
    assert shared_backend.encode("".join(d.text for d in deltas)) == reference.tolist()


@pytest.mark.parametrize("temperature", [5e-324, 1e-9])
def test_vanishing_temperature_samples_greedily_instead_of_failing(
    shared_backend, run_request, temperature: float
) -> None:
    greedy, _ = run_request(shared_backend, request(shared_backend, temperature=0.0))
    tiny, finished = run_request(shared_backend, request(shared_backend, temperature=temperature))
    assert tiny == greedy
    assert finished.finish_reason == "length"


def test_tiny_top_p_keeps_only_the_most_likely_token(shared_backend, run_request) -> None:
    greedy, _ = run_request(shared_backend, request(shared_backend, temperature=0.0))
    nucleus, _ = run_request(shared_backend, request(shared_backend, top_p=1e-6, seed=5))
    assert nucleus == greedy


def test_concurrent_requests_decode_in_one_batch_and_match_solo_runs(
    make_backend, run_request
) -> None:
    # An idle engine waits up to batch_wait_ms, or until max_batch requests have arrived.
    backend = make_backend(max_batch=4, batch_wait_ms=500)
    prompts = ["a", "a longer prompt", "mid size", "x" * 40]
    reqs = [request(backend, prompt_ids=backend.encode(p), seed=i) for i, p in enumerate(prompts)]

    async def together():
        return await asyncio.gather(*(_collect_text(backend, r) for r in reqs))

    texts = asyncio.run(together())
    stats = backend.batching_stats()
    assert stats["prefill_forwards"] == 2  # the warm-up's, then one for all four prompts
    assert stats["peak_batch"] == 4
    assert stats["mean_batch"] > 3  # the four decoded together (the warm-up's step counts 1)
    solo = make_backend(max_batch=1, batch_wait_ms=0)
    assert texts == ["".join(d.text for d in run_request(solo, r)[0]) for r in reqs]


def test_new_request_joins_a_running_batch_at_a_step_boundary(make_backend, run_request) -> None:
    backend = make_backend(max_batch=4, batch_wait_ms=0)
    first_request, second_request = (
        request(backend, max_tokens=40, seed=1),
        request(backend, seed=2),
    )

    async def scenario() -> list[str]:
        first = backend.generate(first_request)
        head = await first.__anext__()  # the first sequence is decoding
        second = asyncio.ensure_future(_collect_text(backend, second_request))
        rest = [e.text async for e in first if isinstance(e, TokenDelta)]
        assert isinstance(head, TokenDelta)
        return [head.text + "".join(rest), await second]

    texts = asyncio.run(scenario())
    assert backend.batching_stats()["peak_batch"] == 2  # both held a row at once
    solo = [
        ("".join(d.text for d in run_request(backend, r)[0]))
        for r in (first_request, second_request)
    ]
    assert texts == solo  # joining changed nobody's tokens


@pytest.mark.parametrize("how", ["aclose", "cancel_task"])
def test_closing_the_stream_stops_generation_and_frees_the_slot(make_backend, how) -> None:
    backend = make_backend()

    async def scenario() -> None:
        stream = backend.generate(request(backend, max_tokens=4000))
        if how == "aclose":
            await stream.__anext__()
            await stream.aclose()
        else:
            started = asyncio.Event()

            async def consume() -> None:
                async for _ in stream:
                    started.set()

            task = asyncio.ensure_future(consume())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert wait_until(lambda: backend.batching_stats()["running"] == 0)
    assert backend.kv_cache_stats()["used_blocks"] == 0  # its reservation is free again
    steps = backend.batching_stats()["decode_steps"]
    assert steps < 3000  # stopped long before max_tokens
    time.sleep(0.05)
    assert backend.batching_stats()["decode_steps"] == steps  # and nothing decodes any more


def test_cuda_out_of_memory_fails_the_batch_frees_cache_and_backend_lives_on(
    make_backend, run_request, monkeypatch
) -> None:
    backend = make_backend()
    engine = backend.engine.engine
    model = engine.model
    freed: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    calls = {"n": 0}

    def oom_once(**inputs):  # the device, failing once: the model is the hardware boundary
        calls["n"] += 1
        if calls["n"] == 2:  # the first decode step after the prefill
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return model(**inputs)

    engine.model = oom_once
    with pytest.raises(BackendOutOfMemory):
        run_request(backend, request(backend))
    assert freed == [True]
    assert backend.batching_stats()["out_of_memory"] == 1
    assert backend.batching_stats()["running"] == 0
    assert backend.kv_cache_stats()["used_blocks"] == 0
    _, finished = run_request(backend, request(backend))
    assert finished.completion_tokens == 12


def test_empty_prompt_and_zero_max_tokens_are_answered(shared_backend, run_request) -> None:
    deltas, finished = run_request(shared_backend, request(shared_backend, prompt_ids=[]))
    assert (finished.prompt_tokens, finished.completion_tokens) == (0, 12)
    deltas, finished = run_request(shared_backend, request(shared_backend, max_tokens=0))
    assert (deltas, finished.completion_tokens, finished.finish_reason) == ([], 0, "length")


def test_memory_stats_on_cpu_report_process_rss(shared_backend) -> None:
    stats = shared_backend.memory_stats()
    assert stats["kind"] == "process_rss"
    assert 0 < stats["used_bytes"] < stats["total_bytes"]


def test_memory_stats_on_cuda_report_torch_cuda_figures(monkeypatch) -> None:
    class Properties:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 20 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 24 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda index: 30 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Properties())
    stats = TransformersBackend(device="cuda:0").memory_stats()  # not started: no model needed
    assert stats["kind"] == "torch_cuda"
    assert (stats["used_bytes"], stats["reserved_bytes"]) == (20 * 2**30, 24 * 2**30)
    assert stats["fraction"] == 0.25


def test_model_directory_without_config_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match=r"config\.json"):
        TransformersBackend(str(tmp_path))


async def _collect_text(backend: TransformersBackend, req: GenerationRequest) -> str:
    return "".join([e.text async for e in backend.generate(req) if isinstance(e, TokenDelta)])


def test_local_model_directory_serves_like_the_embedded_model(
    make_backend, shared_backend, run_request, tmp_path
) -> None:
    from reference_server.tiny_model import save_tiny_model

    directory = save_tiny_model(tmp_path / "tiny-qwen3")
    local = make_backend(model_dir=str(directory))
    assert local.info.model_id == "tiny-qwen3"
    assert local.info.details["embedded"] is False
    req = request(shared_backend, temperature=0.0, max_tokens=16)
    assert run_request(local, req) == run_request(shared_backend, req)
    assert local.encode_chat([{"role": "user", "content": "hi"}]) == shared_backend.encode_chat(
        [{"role": "user", "content": "hi"}]
    )
