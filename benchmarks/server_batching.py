"""Batching benchmark on the embedded tiny model, measured side by side in one run.

1. one-at-a-time (`max_batch=1`) vs the batching engine (`max_batch=16`, with the default
   5 ms batch window and with none) at concurrency 1, 4 and 16, through the backend
   (`--via backend`, default) or the real HTTP server (`--via http`, streamed, 127.0.0.1 only);
2. the batching engine vs transformers' own continuous batching
   (`ContinuousBatchingManager` from `model.init_continuous_batching()`, streaming requests),
   at the same concurrencies (backend level only).

Every client sends its requests back to back; all decode greedily, prompts of an exact token
length, every answer runs to max_tokens (the tiny model never emits eos). Modes are interleaved
and repeated; each figure is the median of its repeats.

    .venv/bin/python benchmarks/server_batching.py
    .venv/bin/python benchmarks/server_batching.py --via http --skip-continuous
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

from reference_server.backend import GenerationRequest, TokenDelta
from reference_server.tiny_model import build_model, load_tokenizer
from reference_server.transformers_backend import TransformersBackend

# One request: prompt ids in, (completion tokens, seconds to first token) out.
Generate = Callable[[list[int]], Awaitable[tuple[int, float]]]


@dataclass
class Measurement:
    mode: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50_ms: float
    latency_p50_ms: float


async def drive(generate: Generate, prompts: list[list[int]], concurrency: int) -> dict[str, Any]:
    """`concurrency` clients share the prompts, each sending its next one when answered."""
    queue = list(prompts)
    ttfts: list[float] = []
    latencies: list[float] = []
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while queue:
            prompt = queue.pop()
            start = time.perf_counter()
            n, ttft = await generate(prompt)
            latencies.append(time.perf_counter() - start)
            ttfts.append(ttft)
            tokens += n

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return {
        "requests": len(prompts),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "latency_p50_ms": statistics.median(latencies) * 1000,
    }


def backend_generate(backend: TransformersBackend, max_tokens: int) -> Generate:
    async def generate(prompt: list[int]) -> tuple[int, float]:
        start = time.perf_counter()
        ttft, n = 0.0, 0
        request = GenerationRequest(prompt_ids=prompt, max_tokens=max_tokens, temperature=0.0)
        async for event in backend.generate(request):
            if isinstance(event, TokenDelta):
                ttft = ttft or time.perf_counter() - start
            else:
                n = event.completion_tokens
        return n, ttft

    return generate


def http_generate(client: Any, max_tokens: int, tokenizer: Any) -> Generate:
    async def generate(prompt: list[int]) -> tuple[int, float]:
        body = {
            "prompt": tokenizer.decode(prompt),
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        ttft, n = 0.0, 0
        async with client.stream("POST", "/v1/completions", json=body) as answer:
            answer.raise_for_status()
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    n = chunk["usage"]["completion_tokens"]
                elif chunk["choices"] and chunk["choices"][0]["text"]:
                    ttft = ttft or time.perf_counter() - start
        return n, ttft

    return generate


class ContinuousBatchingClient:
    """transformers' continuous batching manager behind the same async call as the backend."""

    def __init__(self, max_tokens: int, device: str) -> None:
        from transformers import GenerationConfig

        tokenizer = load_tokenizer()
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        self.max_tokens = max_tokens
        model: Any = build_model()
        model = model.to(device)
        self.manager = model.init_continuous_batching(generation_config=config)
        self.manager.start()
        self._next = 0

    async def generate(self, prompt: list[int]) -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        request_id = f"bench-{self._next}"
        self._next += 1
        self.manager.register_result_handler(request_id, outputs.put_nowait)
        start = time.perf_counter()
        await loop.run_in_executor(
            None,
            lambda: self.manager.add_request(
                prompt, request_id=request_id, max_new_tokens=self.max_tokens, streaming=True
            ),
        )
        ttft = 0.0
        while True:
            output = await outputs.get()
            if output.generated_tokens:
                ttft = ttft or time.perf_counter() - start
            if output.error:
                raise RuntimeError(output.error)
            if output.is_finished():
                return len(output.generated_tokens), ttft

    def close(self) -> None:
        self.manager.stop(block=True, timeout=10)


def prompts_of(length: int, count: int) -> list[list[int]]:
    tokenizer = load_tokenizer()
    base = "Capacity planning measures what a server can hold before it must say no. " * 8
    return [tokenizer.encode(f"{i:03d} {base}")[:length] for i in range(count)]


async def backend_contender(
    stack: AsyncExitStack, args: argparse.Namespace, max_batch: int, batch_wait_ms: float = 5.0
) -> Generate:
    backend = TransformersBackend(
        device=args.device, max_batch=max_batch, batch_wait_ms=batch_wait_ms
    )
    if args.via == "backend":
        await backend.start()
        stack.push_async_callback(backend.close)
        return backend_generate(backend, args.max_tokens)
    import httpx

    from capplan.settings import ServerSettings
    from reference_server.app import create_app
    from reference_server.testing import serve_in_thread

    config = ServerSettings(max_concurrent=16, queue_size=64, max_tokens_cap=4096)
    base_url = stack.enter_context(serve_in_thread(create_app(config, backend)))
    client = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=300))
    return http_generate(client, args.max_tokens, load_tokenizer())


async def run_all(args: argparse.Namespace) -> list[Measurement]:
    """Every mode at every concurrency, `--repeats` times, modes interleaved: the machine's
    background load then hits them alike. Each figure is the median of its repeats."""
    async with AsyncExitStack() as stack:
        contenders: dict[str, Generate] = {
            "one-at-a-time": await backend_contender(stack, args, 1),
            "batched": await backend_contender(stack, args, 16),
            "batched, no batch window": await backend_contender(stack, args, 16, 0.0),
        }
        if not args.skip_continuous:
            continuous = ContinuousBatchingClient(args.max_tokens, args.device)
            stack.callback(continuous.close)
            contenders["transformers continuous"] = continuous.generate
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for concurrency in (1, 4, 16):
            count = max(args.min_requests, concurrency * args.requests_per_client)
            prompts = prompts_of(args.prompt_tokens, count)
            for generate in contenders.values():  # warm every shape once
                await drive(generate, prompts[:concurrency], concurrency)
            for rep in range(args.repeats):
                modes = list(contenders.items())
                rotation = rep % len(modes)
                for mode, generate in modes[rotation:] + modes[:rotation]:
                    result = await drive(generate, prompts, concurrency)
                    samples.setdefault((mode, concurrency), []).append(result)
    return [_median(mode, concurrency, runs) for (mode, concurrency), runs in samples.items()]


def _median(mode: str, concurrency: int, runs: list[dict[str, Any]]) -> Measurement:
    middle = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
    return Measurement(mode=mode, concurrency=concurrency, **middle)


def table(title: str, rows: list[Measurement], baseline: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| mode | concurrency | requests | tokens/s | vs " + baseline + " | TTFT p50 ms "
        "| latency p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r.concurrency: r.tokens_per_s for r in rows if r.mode == baseline}
    for r in sorted(rows, key=lambda r: (r.concurrency, r.mode != baseline, r.mode)):
        ratio = r.tokens_per_s / base[r.concurrency] if r.concurrency in base else float("nan")
        lines.append(
            f"| {r.mode} | {r.concurrency} | {r.requests} | {r.tokens_per_s:,.0f} | "
            f"{ratio:.2f}x | {r.ttft_p50_ms:.1f} | {r.latency_p50_ms:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--via", choices=["backend", "http"], default="backend")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-continuous", action="store_true")
    parser.add_argument("--json", help="also write every measurement to this JSON file")
    args = parser.parse_args()

    import torch

    print(
        f"embedded model via {args.via}, {args.device}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), "
        f"prompt {args.prompt_tokens} tokens, max_tokens {args.max_tokens}, "
        f"max({args.min_requests}, {args.requests_per_client} x concurrency) requests, greedy, "
        f"median of {args.repeats} interleaved repeats"
    )
    measurements = asyncio.run(run_all(args))
    serial = [m for m in measurements if m.mode != "transformers continuous"]
    print(table("batched vs one-at-a-time", serial, "one-at-a-time"))
    versus = [m for m in measurements if m.mode in ("batched", "transformers continuous")]
    if not args.skip_continuous:
        print()
        print(table("the engine vs transformers continuous batching", versus, "batched"))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(m) for m in measurements], out, indent=2)


if __name__ == "__main__":
    main()
