"""The server's engine against plain `generate()` on the same model, side by side in one run.

For each batch B (default 1, 8, 32): B requests with prompts of exactly `--prompt` random tokens
and exactly `--new` new tokens each (greedy, eos disabled), all submitted at t0. `generate()` runs
them as one padded batch; the engine (reference_server/engine, through its own thread, as the
server runs it, without HTTP) admits them into a KV pool sized for the workload and prefills them
in chunks of `--chunk` tokens (the server's default). Reported per engine and batch, the median
of `--repeats` interleaved runs:

- tokens/s: B x new / (last token - t0): prefill included;
- ms/step: the median gap between consecutive tokens of the same request;
- TTFT: t0 to each request's first token (first and last request);
- peak RSS +MB: the process's peak RSS over the run (VmHWM reset before it) minus the RSS before
  it; the engine's pool is allocated inside the run.

Models: `tiny` (the embedded model, vocabulary 101) and `big` (its body with Qwen3's 151,936-token
vocabulary: a real checkpoint's logits and sampling cost).

    .venv/bin/python benchmarks/server_engine.py --model big --threads 1
    .venv/bin/python benchmarks/server_engine.py --model tiny --batches 1,8,32 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from capplan.estimate.memory_capplan import BLOCK_SIZE, EngineLimits, pool_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from common import figures, timed_engine, timed_generate

from reference_server.engine.budget import engine_shape
from reference_server.engine.build import build_engine
from reference_server.engine.runner import EngineThread
from reference_server.tiny_model import BIG_VOCAB, build_model

Run = Callable[[Any, list[list[int]], int], tuple[float, list[list[float]]]]


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def run_generate(model: Any, prompts: list[list[int]], new: int) -> tuple[float, list[list[float]]]:
    """One padded `generate()` of every prompt."""
    return timed_generate(model, torch.tensor(prompts), new)


def engine_runner(chunk: int, batch_wait_ms: float) -> Run:
    def run(model: Any, prompts: list[list[int]], new: int) -> tuple[float, list[list[float]]]:
        """The engine on its own thread, its pool sized for exactly this workload."""
        blocks = sum(-(-(len(p) + new) // BLOCK_SIZE) for p in prompts)
        limits = EngineLimits(len(prompts), chunk, int(model.config.max_position_embeddings))
        size = pool_bytes(engine_shape(model), blocks)
        engine, _ = build_engine(model, limits, eos_token_ids=set(), kv_cache_memory=size)
        thread = EngineThread(engine, batch_wait_ms=batch_wait_ms)
        thread.start()
        try:
            return timed_engine(thread, prompts, new)
        finally:
            thread.stop()

    return run


def measure(run: Run, model: Any, prompts: list[list[int]], new: int) -> dict[str, float]:
    gc.collect()
    before = rss_bytes()
    reset_peak()
    start, times = run(model, prompts, new)
    peak = peak_bytes()
    assert all(len(t) == new for t in times), [len(t) for t in times]
    return {
        **figures(len(prompts), new, start, times),
        "ttft_first_ms": 1e3 * min(t[0] - start for t in times),
        "peak_rss_mb": (peak - before) / 2**20,
    }


def prompts_for(batch: int, length: int, seed: int) -> list[list[int]]:
    """Random ids that avoid the four special tokens (0..3) and stay in the printable range."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, 100, (batch, length), generator=generator).tolist()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "big"), default="big")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=512, help="the engine's prefill chunk")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", help="also write every run to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model(BIG_VOCAB if args.model == "big" else None)
    runners: dict[str, Run] = {
        "generate()": run_generate,
        "engine": engine_runner(args.chunk, args.batch_wait_ms),
    }
    warm = prompts_for(1, 16, 0)
    for run in runners.values():
        run(model, warm, 2)
    rows: list[dict[str, Any]] = []
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = prompts_for(batch, args.prompt, batch)
        for rep in range(args.repeats):
            order = list(runners.items())
            for name, run in order[rep % 2 :] + order[: rep % 2]:  # alternate who goes first
                figures = measure(run, model, prompts, args.new)
                rows.append({"engine": name, "batch": batch, "repeat": rep, **figures})
                print(json.dumps(rows[-1]), flush=True)
    print_table(args, rows)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return rows


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    print(
        f"\nmodel {args.model}, prompt {args.prompt} + {args.new} new tokens, greedy, "
        f"torch {torch.__version__} ({args.threads} thread), engine chunk {args.chunk}; "
        f"median of {args.repeats} (best in brackets for tokens/s)"
    )
    print("| batch | engine | tokens/s | ms/step | TTFT first / last ms | peak RSS +MB |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch in sorted({r["batch"] for r in rows}):
        for name in ("generate()", "engine"):
            cell = [r for r in rows if r["batch"] == batch and r["engine"] == name]
            if not cell:
                continue

            def median(key: str, cell: list[dict[str, Any]] = cell) -> float:
                return statistics.median(r[key] for r in cell)

            best = max(r["tokens_per_s"] for r in cell)
            print(
                f"| {batch} | {name} | {median('tokens_per_s'):,.0f} ({best:,.0f}) | "
                f"{median('ms_per_step'):.1f} | {median('ttft_first_ms'):,.0f} / "
                f"{median('ttft_last_ms'):,.0f} | {median('peak_rss_mb'):,.0f} |"
            )


if __name__ == "__main__":
    main()
