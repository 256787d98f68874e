"""What the GPU scripts share: a catalog model with random weights, and an NVML memory sampler."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from typing import Any


def random_model(model_id: str, device: str) -> tuple[Any, int]:
    """The catalog model `model_id` with seeded random weights, built on the device (bf16 on
    cuda, so the memory is the real checkpoint's); returns it and its vocabulary size."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from capplan.estimate.model_spec import resolve_model

    spec = resolve_model(model_id).spec
    config = Qwen3Config(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=spec.tied_embeddings,
        eos_token_id=3, pad_token_id=1, bos_token_id=None,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=3, pad_token_id=1, do_sample=False)
    return model.eval(), spec.vocab


def timed_generate(model: Any, prompts: Any, new: int) -> tuple[float, list[list[float]]]:
    """One padded `generate()` of the (B, L) prompt tensor, exactly `new` tokens each; returns t0
    and every request's token times (a logits processor stamps each step)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

    class Stamps(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if scores.is_cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            return scores

    stamps = Stamps()
    config = GenerationConfig(
        do_sample=False, max_new_tokens=new, min_new_tokens=new, eos_token_id=None, pad_token_id=1
    )
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            generation_config=config,
            logits_processor=LogitsProcessorList([stamps]),
        )
    return start, [stamps.times] * prompts.shape[0]


def timed_engine(
    thread: Any, prompts: list[list[int]], new: int
) -> tuple[float, list[list[float]]]:
    """The prompts submitted at once to a started `EngineThread`, `new` tokens each; returns t0
    and every request's token times. Raises the first error a request ended with."""
    from reference_server.backend import Finished, TokenDelta
    from reference_server.engine.sequence import Sequence
    from reference_server.text_stream import TextStream

    times: list[list[float]] = [[] for _ in prompts]
    done = threading.Semaphore(0)
    errors: list[BaseException] = []

    def sink_for(i: int) -> Any:
        def sink(event: Any) -> None:
            if isinstance(event, TokenDelta):
                times[i].extend([time.perf_counter()] * event.n_tokens)
            elif isinstance(event, Finished | BaseException):
                if isinstance(event, BaseException):
                    errors.append(event)
                done.release()

        return sink

    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        stream = TextStream(lambda ids: "a" * len(ids))
        thread.submit(Sequence(prompt, new, sink_for(i), stream, temperature=0.0))
    for _ in prompts:
        done.acquire()
    if errors:
        raise errors[0]
    return start, times


def figures(batch: int, new: int, start: float, times: list[list[float]]) -> dict[str, float]:
    """tokens/s (prefill included), the median gap between a request's tokens, the last TTFT."""
    last = max(t[-1] for t in times)
    gaps = [b - a for t in times for a, b in itertools.pairwise(t)]
    return {
        "tokens_per_s": batch * new / (last - start),
        "ms_per_step": 1e3 * statistics.median(gaps) if gaps else 0.0,
        "ttft_last_ms": 1e3 * max(t[0] - start for t in times),
    }


class NvmlPeak:
    """Device 0's used memory as NVML reports it, sampled every 20 ms in a thread; `used()` is
    None where there is no NVML device (a cpu run). A context manager, or start() / stop()."""

    def __init__(self) -> None:
        from capplan.devices import list_devices, load_nvml

        self.nvml = load_nvml()
        devices, _ = list_devices(self.nvml)
        self.handle: Any = None
        if devices and self.nvml is not None:
            self.nvml.nvmlInit()
            self.handle = self.nvml.nvmlDeviceGetHandleByIndex(0)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self) -> int | None:
        if self.handle is None:
            return None
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used() or 0)
            time.sleep(0.02)

    def start(self) -> NvmlPeak:
        self._thread.start()
        return self

    def stop(self) -> int | None:
        """Stops sampling; the peak, or None without NVML."""
        self._stop.set()
        self._thread.join()
        used = self.used()
        if used is None:
            return None
        self.peak = max(self.peak, used)
        return self.peak

    def __enter__(self) -> NvmlPeak:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
