"""The `transformers` backend: a local model directory, or the embedded tiny model.

Forward passes run on the engine's own thread (`reference_server.engine`): a KV pool allocated
once at start, requests admitted by reserving their prompt + max_tokens in it, prompts prefilled in
chunks between decode steps. The event loop only tokenizes prompts and relays events. Nothing is
downloaded and no remote code runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from capplan.errors import InputError
from capplan.estimate.memory_capplan import BLOCK_SIZE, EngineLimits, default_prefill_chunk
from reference_server.backend import (
    BackendInfo,
    Finished,
    GenerationEvent,
    GenerationRequest,
    KvPoolInfo,
    TokenDelta,
)
from reference_server.engine.runner import EngineThread
from reference_server.engine.sequence import EngineEvent, Sequence
from reference_server.text_stream import TextStream

WARMUP_PROMPT = "Warm-up: the quick brown fox."
ENGINES = ("auto", "fixed")


class TransformersBackend:
    """Implements `reference_server.backend.Backend` with a transformers causal LM."""

    def __init__(
        self,
        model_dir: str | None = None,
        *,
        device: str | None = None,
        max_batch: int = 8,
        batch_wait_ms: float = 5.0,
        engine: str = "auto",
        kv_cache_memory: int | None = None,
        gpu_memory_utilization: float | None = None,
        prefill_chunk_tokens: int | None = None,
    ) -> None:
        if model_dir is not None and not (Path(model_dir) / "config.json").is_file():
            raise InputError(
                f"model directory {model_dir!r} has no config.json; pass a local directory "
                "written by save_pretrained, or omit --model for the embedded tiny model"
            )
        if max_batch < 1:
            raise InputError(f"max_batch must be at least 1, got {max_batch}")
        if engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.model_dir = model_dir
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.kv_cache_memory = kv_cache_memory
        self.gpu_memory_utilization = gpu_memory_utilization
        self._device = device or _default_device()
        self.prefill_chunk_tokens = prefill_chunk_tokens or default_prefill_chunk(self._device)
        self._tokenizer: Any = None
        self._engine: EngineThread | None = None
        model_id = Path(model_dir).name if model_dir else _embedded_model_id()
        self.info = BackendInfo(
            name="transformers",
            model_id=model_id,
            device=self._device,
            max_context=0,  # known once the config is loaded in start()
            details={
                "model_dir": model_dir,
                "embedded": model_dir is None,
                "engine": "fixed",  # the one engine, on every device (docs/server.md)
                "batching": "continuous over a fixed KV pool, chunked prefill",
                "max_batch": max_batch,
                "batch_wait_ms": batch_wait_ms,
                "prefill_chunk_tokens": self.prefill_chunk_tokens,
            },
        )

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the model off the event loop, start the engine, and run one short generation."""
        if self._engine is not None:
            return
        self._engine = await asyncio.to_thread(self._load)
        self._engine.start()
        warmup = GenerationRequest(
            prompt_ids=self.encode(WARMUP_PROMPT), max_tokens=2, temperature=0.0
        )
        async for _ in self.generate(warmup):
            pass

    def _load(self) -> EngineThread:
        import torch

        tokenizer: Any
        model: Any
        if self.model_dir is None:
            from reference_server.tiny_model import build_model, load_tokenizer

            tokenizer = load_tokenizer()
            model = build_model()
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, **options)
            # bf16/fp16 checkpoints keep their dtype on cuda; cpu matmuls want float32.
            dtype = "auto" if self._device.startswith("cuda") else torch.float32
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype, **options)
        model = model.to(self._device).eval()
        fast = getattr(tokenizer, "backend_tokenizer", None)
        if fast is not None:
            # tokenizer.json may ship truncation or padding; the server counts every prompt
            # token, so neither applies, and nothing changes the tokenizer once threads share it.
            fast.no_truncation()
            fast.no_padding()
        self._tokenizer = tokenizer
        self.info.max_token_chars = max(map(len, tokenizer.get_vocab()), default=0) or None
        max_context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.info.max_context = max_context
        self.info.details["dtype"] = str(model.dtype).removeprefix("torch.")
        return self._build_engine(model, tokenizer, max_context)

    def _build_engine(self, model: Any, tokenizer: Any, max_context: int) -> EngineThread:
        """The KV pool for this device, allocated now, and the engine over it."""
        from reference_server.engine.build import build_engine

        engine, choice = build_engine(
            model,
            EngineLimits(self.max_batch, self.prefill_chunk_tokens, max_context),
            eos_token_ids=_eos_token_ids(model, tokenizer),
            kv_cache_memory=self.kv_cache_memory,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        pool = engine.pool
        self.info.kv_pool = KvPoolInfo(block_size=BLOCK_SIZE, num_blocks=pool.num_blocks)
        self.info.details["kv_cache"] = {
            "pool_bytes": pool.nbytes,
            "num_blocks": pool.num_blocks,
            "block_size": BLOCK_SIZE,
            "tokens": pool.capacity,
            "bytes_per_token": pool.shape.kv_bytes_per_token,
            "workspace_bytes": choice.plan.workspace.total_bytes,
            "sized_by": choice.basis,
        }
        return EngineThread(engine, batch_wait_ms=self.batch_wait_ms)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.stop)
            engine.engine.model = None
        _free_cuda_cache()

    # ----------------------------------------------------------------------------- tokenizer
    # No lock: the server tokenizes on worker threads, several prompts at once, while the engine
    # thread decodes. The Rust tokenizer's encode and decode only read it (its truncation and
    # padding, the one state they could change, are switched off once in _load), and
    # `encode_batch` releases the GIL, so a long prompt keeps one core busy, not the event loop.
    # (`tokenizer.encode` holds the GIL: 7 s for a 3.9 MB prompt, every other thread frozen.)

    def encode(self, text: str) -> list[int]:
        return self._encode(text, add_special_tokens=True)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        tokenizer = self._require_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            # A base model without a template: a plain transcript ending on the assistant's turn.
            text = "".join(f"{m.get('role', '')}: {m.get('content', '')}\n" for m in messages)
            return self.encode(text + "assistant: ")
        # What apply_chat_template(tokenize=True) does: render, then encode without adding
        # special tokens (the template wrote them).
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return self._encode(str(rendered), add_special_tokens=False)

    def _encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        tokenizer = self._require_tokenizer()
        fast = getattr(tokenizer, "backend_tokenizer", None)
        if fast is None:  # a slow (pure Python) tokenizer
            return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
        (encoding,) = fast.encode_batch([text], add_special_tokens=add_special_tokens)
        return list(encoding.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("TransformersBackend.start() has not been awaited")
        return self._tokenizer

    # ----------------------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        engine = self._engine
        if engine is None:
            raise RuntimeError("TransformersBackend.start() has not been awaited")
        prompt_tokens = len(request.prompt_ids)
        if request.max_tokens <= 0:
            yield Finished(finish_reason="length", prompt_tokens=prompt_tokens, completion_tokens=0)
            return
        prompt_ids = list(request.prompt_ids) or [self._empty_prompt_token()]
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def sink(event: EngineEvent) -> None:  # engine thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        sequence = Sequence(
            prompt_ids=prompt_ids,
            max_tokens=request.max_tokens,
            sink=sink,
            stream=TextStream(self._decode, request.stop),
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            reported_prompt_tokens=prompt_tokens,
        )
        engine.submit(sequence)
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            # Runs on aclose(), on task cancellation and on normal exit alike.
            engine.cancel(sequence)

    def _empty_prompt_token(self) -> int:
        tokenizer = self._tokenizer
        for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
            if token_id is not None:
                return int(token_id)
        return 0

    # ----------------------------------------------------------------------------- observability

    @property
    def engine(self) -> EngineThread | None:
        return self._engine

    def batching_stats(self) -> dict[str, Any]:
        thread = self._engine
        if thread is None:
            return {"running": 0, "waiting": 0}
        counters = thread.engine.counters
        steps = counters.decode_steps
        return {
            "running": thread.running,
            "waiting": thread.waiting,
            "decode_steps": steps,
            "mean_batch": counters.decode_rows / steps if steps else 0.0,
            "peak_batch": counters.peak_batch,
            "prefill_forwards": counters.prefill_forwards,
            "prefill_tokens": counters.prefill_tokens,
            "out_of_memory": counters.out_of_memory,
        }

    def kv_cache_stats(self) -> dict[str, Any] | None:
        """The pool's blocks as vLLM reports them: in use by running requests, and in all."""
        thread = self._engine
        if thread is None:
            return None
        pool = thread.engine.pool
        return {
            "block_size": BLOCK_SIZE,
            "num_blocks": pool.num_blocks,
            "used_blocks": pool.used_blocks,
            "usage": pool.used_blocks / pool.num_blocks,
            "pool_bytes": pool.nbytes,
        }

    def memory_stats(self) -> dict[str, Any]:
        # /stats shows info.details and reads memory first; refreshing the live batching figures
        # here puts them there without a change to the Backend protocol.
        self.info.details["batch_stats"] = self.batching_stats()
        stats = self._device_memory()
        kv_cache = self.kv_cache_stats()
        if kv_cache is not None:
            stats["kv_cache"] = kv_cache
        return stats

    def _device_memory(self) -> dict[str, Any]:
        if self._device.startswith("cuda"):
            import torch

            index = torch.device(self._device).index or 0
            used = int(torch.cuda.memory_allocated(index))
            total = int(torch.cuda.get_device_properties(index).total_memory)
            return {
                "kind": "torch_cuda",
                "device": self._device,
                "used_bytes": used,
                "reserved_bytes": int(torch.cuda.memory_reserved(index)),
                "peak_bytes": int(torch.cuda.max_memory_allocated(index)),
                "total_bytes": total,
                "fraction": used / total if total else None,
            }
        import psutil

        rss = int(psutil.Process().memory_info().rss)
        total = int(psutil.virtual_memory().total)
        return {
            "kind": "process_rss",
            "device": self._device,
            "used_bytes": rss,
            "total_bytes": total,
            "fraction": rss / total if total else None,
        }


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _embedded_model_id() -> str:
    from capplan.embedded_model import MODEL_ID

    return MODEL_ID


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["TokenDelta", "TransformersBackend"]
