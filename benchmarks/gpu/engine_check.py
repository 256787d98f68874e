"""The server's engine on a GPU: tokens/s against plain `generate()`, and memory against the
estimate (issue 10's goals: at least `generate()`'s tokens/s at every batch, NVML peak within 5%
of `capplan estimate --runtime capplan`).

One process, no network, no server (the GPU host has no FastAPI): the model is built from the
catalog's shape with random weights directly on the device. First `generate()` runs each batch
(prompts of `--prompt` random tokens, exactly `--new` new tokens, greedy); then the engine is
built exactly as the estimate sizes it (`--concurrency` = the largest batch: its KV pool to the
byte, its max_batch, its prefill chunk) and runs the same batches through its own thread, as the
server does, while NVML is sampled every 20 ms; last, with what the budget leaves, transformers'
own continuous batching runs them too (tokens/s only: the engine choice on a GPU). Written to
`--out` after every step, so a run cut short keeps what it measured.
`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` as `capplan serve` sets it (unless the
environment sets it).

    python benchmarks/gpu/engine_check.py --model qwen3-8b --gpu auto --out engine.json
    python benchmarks/gpu/engine_check.py --model embedded --gpu cpu --vram 1.5GiB \\
        --batches 1,2 --prompt 32 --new 8 --out x.json    # the script's own test, on a cpu

Budget: about 3 minutes on an H200 for Qwen3-8B at 512 + 64 tokens (model build ~1 s, six runs
of 5-15 s each, the pool's allocation); `--budget-s` skips what would run past it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts

from common import (  # benchmarks/gpu/common.py, beside this script
    NvmlPeak,
    figures,
    random_model,
    timed_engine,
    timed_generate,
)

from capplan.estimate.options import EstimateOptions, estimate_from_options
from capplan.estimate.result import EstimateResult


def estimate(args: argparse.Namespace, batch: int) -> EstimateResult:
    return estimate_from_options(
        EstimateOptions(
            model=args.model,
            gpu=args.gpu,
            runtime="capplan",
            prompt_tokens=args.prompt,
            max_tokens=args.new,
            concurrency=batch,
            vram=args.vram,
        )
    )


def build_model(args: argparse.Namespace, device: str) -> Any:
    """The embedded tiny model, or a catalog model with random weights (bf16 on cuda)."""
    if args.model == "embedded":
        from reference_server.tiny_model import build_model as tiny

        return tiny().to(device)
    return random_model(args.model, device)[0]


class ContinuousBatching:
    """transformers' own continuous batching (`ContinuousBatchingManager`), measured for the
    engine choice only (it is not a server engine: docs/server.md, "The engine"): its paged KV
    sized to the same bytes as the engine's pool, its prefill budget the engine's chunk."""

    def __init__(self, model: Any, kv_bytes: int, chunk: int, max_batch: int, new: int) -> None:
        import inspect

        from transformers import ContinuousBatchingConfig, GenerationConfig

        from reference_server.engine.budget import engine_shape

        page = 256
        num_blocks = max(1, kv_bytes // (engine_shape(model).kv_bytes_per_token * page))
        fields = inspect.signature(ContinuousBatchingConfig).parameters
        size = "page_size" if "page_size" in fields else "block_size"  # renamed in 5.2x
        config = ContinuousBatchingConfig(
            num_blocks=num_blocks, max_batch_tokens=chunk, max_requests_per_batch=max_batch,
            allow_block_sharing=False, **{size: page},
        )  # fmt: skip
        # eos -1: every request runs to `new` tokens, as in the other two.
        generation = GenerationConfig(
            do_sample=False, max_new_tokens=new, eos_token_id=-1, pad_token_id=1
        )
        self.manager = model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=config
        )
        self.manager.start()
        self.attention = str(model.config._attn_implementation)

    def run(self, prompts: list[list[int]], new: int) -> tuple[float, list[list[float]]]:
        start = time.perf_counter()
        ids = [
            self.manager.add_request(p, max_new_tokens=new, record_timestamps=True) for p in prompts
        ]
        results: dict[str, Any] = {}
        while len(results) < len(ids):
            out = self.manager.get_result(timeout=120)
            if out is None:
                raise RuntimeError("continuous batching produced nothing for 120 s")
            if out.error:
                raise RuntimeError(out.error)
            if out.is_finished():
                results[out.request_id] = out
        return start, [list(results[i].timestamps) for i in ids]

    def stop(self) -> None:
        self.manager.stop(block=True, timeout=30)


def measure(out: dict[str, Any], name: str, run_one: Any, batches: list[int], args: Any) -> None:
    """Each batch: a 2-token run (the shape's first kernels), then the timed one."""
    for batch in batches:
        if out["left_s"]() < 20:
            out["rows"].append({"engine": name, "batch": batch, "skipped": "budget"})
            continue
        run_one(batch, 2)
        start, times = run_one(batch, args.new)
        out["rows"].append(
            {"engine": name, "batch": batch, **figures(batch, args.new, start, times)}
        )
        print(json.dumps(out["rows"][-1]), flush=True)
        out["save"]()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    began = time.monotonic()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batches = [int(b) for b in args.batches.split(",")]
    out: dict[str, Any] = {
        "model": args.model, "gpu": args.gpu,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "prompt_tokens": args.prompt, "new_tokens": args.new, "rows": [],
    }  # fmt: skip
    path = Path(args.out)

    def save() -> None:
        shown = {k: v for k, v in out.items() if not callable(v)}
        path.write_text(json.dumps(shown, indent=1), encoding="utf-8")

    out["save"], out["left_s"] = save, lambda: args.budget_s - (time.monotonic() - began)
    nvml_idle = NvmlPeak().used()
    model = build_model(args, device)
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(4, min(100, vocab), (b, args.prompt), generator=generator)
               for b in batches}  # fmt: skip
    measure(out, "generate()", lambda b, n: timed_generate(model, prompts[b].to(device), n),
            batches, args)  # fmt: skip
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    # The engine, sized as the estimate sizes it for the largest batch.
    planned = estimate(args, max(batches))
    b = planned.capplan
    assert b is not None
    out["estimate"] = {
        "pool_bytes": b.pool_bytes, "workspace_bytes": b.workspace.total_bytes,
        "weights_bytes": b.weights_bytes, "non_torch_bytes": b.non_torch_bytes,
        "allocated_bytes": b.allocated_bytes, "peak_bytes": b.peak_bytes,
        "max_batch": b.limits.max_batch, "prefill_chunk_tokens": b.limits.prefill_chunk_tokens,
        "decode_ms_per_step": planned.timing.decode_ms_per_token_at_concurrency,
    }  # fmt: skip
    pool_bytes = measure_engine(out, model, prompts, batches, args, planned, nvml_idle)
    gc.collect()  # the engine and its pool went with measure_engine's frame
    if cuda:
        torch.cuda.empty_cache()
    if args.with_cb and out["left_s"]() > 40:
        measure_cb(args, out, model, prompts, batches, pool_bytes, b.limits.prefill_chunk_tokens)
    out["verdict"] = verdict(out)
    out["seconds"] = time.monotonic() - began
    save()
    print(json.dumps({"memory": out["memory"], "verdict": out["verdict"]}), flush=True)
    return out


def measure_engine(
    out: dict[str, Any], model: Any, prompts: dict[int, Any], batches: list[int], args: Any,
    planned: EstimateResult, nvml_idle: int | None,
) -> int:  # fmt: skip
    """The engine built as the estimate sizes it, its batches under NVML; the pool's bytes."""
    import torch

    from capplan.estimate.memory_capplan import EngineLimits
    from reference_server.engine.build import build_engine
    from reference_server.engine.engine import cache_keyword
    from reference_server.engine.runner import EngineThread

    b = planned.capplan
    assert b is not None
    sampler = NvmlPeak().start()
    limits = EngineLimits(b.limits.max_batch, b.limits.prefill_chunk_tokens, b.limits.max_context)
    engine, _ = build_engine(model, limits, eos_token_ids=set(), kv_cache_memory=b.pool_bytes)
    out["engine"] = {
        "pool_bytes": engine.pool.nbytes, "num_blocks": engine.pool.num_blocks,
        "cache_keyword": cache_keyword(model),
        "attention": "capplan_pool (sdpa over gathered keys, grouped heads packed)",
    }  # fmt: skip
    thread = EngineThread(engine, batch_wait_ms=5.0)
    thread.start()
    try:
        measure(out, "engine", lambda b, n: timed_engine(thread, prompts[b].tolist(), n),
                batches, args)  # fmt: skip
    finally:
        thread.stop()
    peak = sampler.stop()
    memory: dict[str, Any] = {"nvml_idle": nvml_idle, "nvml_peak": peak}
    if peak is not None and nvml_idle is not None:
        memory["nvml_peak_minus_idle"] = peak - nvml_idle
        memory["vs_estimate"] = (peak - nvml_idle) / b.peak_bytes - 1
    if torch.cuda.is_available():
        memory["max_allocated"] = torch.cuda.max_memory_allocated()
        memory["max_reserved"] = torch.cuda.max_memory_reserved()
        memory["allocated_vs_estimate"] = memory["max_allocated"] / b.allocated_bytes - 1
    out["memory"] = memory
    out["save"]()
    return engine.pool.nbytes


def measure_cb(
    args: Any, out: dict[str, Any], model: Any, prompts: dict[int, Any], batches: list[int],
    pool_bytes: int, chunk: int,
) -> None:  # fmt: skip
    """transformers' continuous batching at the same batches; a failure is a result."""
    try:
        cb = ContinuousBatching(model, pool_bytes, chunk, max(batches), args.new)
        out["cb_attention"] = cb.attention
    except Exception as exc:
        out["cb_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return
    try:
        measure(out, "transformers-cb", lambda b, n: cb.run(prompts[b].tolist(), n), batches, args)
    except Exception as exc:
        out["cb_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        cb.stop()


def verdict(out: dict[str, Any]) -> dict[str, Any]:
    """The issue's two goals, read off the rows."""
    rows = [r for r in out["rows"] if "tokens_per_s" in r]
    speed, cb = {}, {}
    for batch in sorted({r["batch"] for r in rows}):
        cell = {r["engine"]: r["tokens_per_s"] for r in rows if r["batch"] == batch}
        if "engine" in cell and "generate()" in cell:
            speed[batch] = cell["engine"] / cell["generate()"]
        if "engine" in cell and "transformers-cb" in cell:
            cb[batch] = cell["transformers-cb"] / cell["engine"]
    vs = out["memory"].get("vs_estimate")
    return {
        "engine_over_generate": speed,
        "transformers_cb_over_engine": cb,
        "at_least_generate_everywhere": bool(speed) and min(speed.values()) >= 1.0,
        "nvml_within_5pct": None if vs is None else abs(vs) <= 0.05,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen3-8b", help="catalog id, or embedded")
    parser.add_argument("--gpu", default="auto", help="for the estimate: auto, h200, cpu...")
    parser.add_argument("--vram", default=None, help="for the estimate (RAM with --gpu cpu)")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--budget-s", type=float, default=180.0)
    parser.add_argument(
        "--with-cb",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure transformers' continuous batching (last, within the budget)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
