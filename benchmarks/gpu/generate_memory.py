"""Plain transformers `generate()` at the estimator's recommended concurrency and past it.

For one model shape and workload, asks `capplan estimate --runtime hf --concurrency B` for every
batch B it runs (the recommended concurrency, then steps towards and past the out-of-memory
ceiling), builds the model with random weights directly on the device (no hub), and records for
each B what the device did: peak allocated and reserved (torch), the process's NVML peak (sampled
every 20 ms), the caching allocator's retries and out-of-memory count (`num_alloc_retries`,
`num_ooms`: where generate() survives only by freeing its cache, and where it fails), the
decode ms per step and the prefill time, next to the estimate's figures. Run once per allocator
configuration (the environment must be set before CUDA starts, so `--alloc-conf expandable`
re-executes this script with `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`).

    python benchmarks/gpu/generate_memory.py --model qwen3-8b --gpu h200 --out out.json
    python benchmarks/gpu/generate_memory.py --model embedded --gpu cpu --batches 1,4 --out x.json

On a CPU it runs the same path with the CUDA figures left empty (the script's own test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import NvmlPeak, random_model  # benchmarks/gpu/common.py, beside this script

from capplan.estimate.options import EstimateOptions, estimate_from_options
from capplan.estimate.result import EstimateResult

EXPANDABLE = "expandable_segments:True"


def estimate_at(args: argparse.Namespace, batch: int | None) -> EstimateResult:
    return estimate_from_options(
        EstimateOptions(
            model=args.model,
            gpu=args.gpu,
            prompt_tokens=args.prompt,
            max_tokens=args.new,
            concurrency=batch,
            alloc_conf=args.alloc_conf,
            margin=0.0 if batch is not None else 0.03,
        )
    )


def plan_batches(args: argparse.Namespace) -> list[int]:
    """The recommended concurrency times each factor, no further than 10% past the estimated
    out-of-memory ceiling (where the device is full but allocation still fits lies between)."""
    if args.batches:
        return [int(b) for b in args.batches.split(",")]
    recommended = estimate_at(args, None)
    low, ceiling = max(1, recommended.concurrency), recommended.zero_margin_concurrency
    factors = [float(f) for f in args.factors.split(",")]
    return sorted({min(int(low * f), int(ceiling * 1.1)) for f in factors})


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    result: dict[str, Any] = {
        "model": args.model,
        "gpu": args.gpu,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "default"),
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "torch": torch.__version__,
        "rows": [],
    }
    idle = NvmlPeak().used()
    result["nvml_used_idle"] = idle
    model, vocab = random_model(args.model, device)
    for batch in plan_batches(args):
        est = estimate_at(args, batch)
        row: dict[str, Any] = {
            "batch": batch,
            "estimate": {
                "allocated_peak_bytes": est.memory.allocated_peak_bytes,
                "peak_bytes": est.memory.peak_bytes,
                "decode_ms_per_step": est.timing.decode_ms_per_token_at_concurrency,
                "prefill_ms": est.timing.prefill_ms,
                "recommended": est.concurrency,
                "oom_ceiling": est.zero_margin_concurrency,
            },
        }
        ids = torch.randint(10, min(90, vocab), (batch, args.prompt), device=device)
        mask = torch.ones_like(ids)
        try:
            with torch.no_grad():
                model.generate(input_ids=ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=2)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_stats()
                t0 = time.perf_counter()
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1)
                if cuda:
                    torch.cuda.synchronize()
                row["prefill_s"] = time.perf_counter() - t0
                with NvmlPeak() as peak:
                    t0 = time.perf_counter()
                    model.generate(
                        input_ids=ids, attention_mask=mask,
                        max_new_tokens=args.new, min_new_tokens=args.new,
                    )  # fmt: skip
                    if cuda:
                        torch.cuda.synchronize()
                    row["generate_s"] = time.perf_counter() - t0
            row["decode_ms_per_step"] = (
                1000 * (row["generate_s"] - row["prefill_s"]) / max(args.new - 1, 1)
            )
            if cuda:
                stats = torch.cuda.memory_stats()
                row["peak_allocated"] = torch.cuda.max_memory_allocated()
                row["peak_reserved"] = torch.cuda.max_memory_reserved()
                row["alloc_retries"] = stats["num_alloc_retries"] - before["num_alloc_retries"]
                row["ooms"] = stats["num_ooms"] - before["num_ooms"]
                if idle is not None:
                    row["nvml_peak_minus_idle"] = peak.peak - idle
        except Exception as exc:  # an out-of-memory error is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        result["rows"].append(row)
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(json.dumps({k: v for k, v in row.items() if k != "estimate"}), flush=True)
        if cuda:
            torch.cuda.empty_cache()
        if "error" in row and args.stop_on_error:
            break
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen3-8b")
    parser.add_argument("--gpu", default="auto")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--batches", default="", help="B1,B2,...; default: from the estimate")
    parser.add_argument(
        "--factors", default="1,1.5,2,3", help="planned batches: the recommendation times these"
    )
    parser.add_argument("--alloc-conf", choices=("default", "expandable"), default="default")
    parser.add_argument("--stop-on-error", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    wanted = EXPANDABLE if args.alloc_conf == "expandable" else None
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF") != wanted and wanted is not None:
        # The allocator reads its configuration once, when CUDA starts: a fresh process.
        env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": wanted}
        return subprocess.call([sys.executable, __file__, *(argv or sys.argv[1:])], env=env)
    measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
