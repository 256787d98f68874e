"""`capplan estimate`: memory, concurrency, latency and server settings for one deployment.

Only stdlib and typer at module level: the estimator and rich load inside the command, and
torch / transformers / pandas / httpx / fastapi never load at all.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from capplan.estimate.result import EstimateResult

FORMATS = ("table", "json", "markdown")


def _fail(message: str) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(2)


def estimate(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Catalog id with optional quantization suffix (qwen3-8b-int8, llama-3.1-8b-awq), "
        "an HF id from the catalog, or a local config.json / model directory.",
    ),
    gpu: str | None = typer.Option(
        None,
        "--gpu",
        "-g",
        help="Catalog id (rtx3080), 'auto' (NVML), 'cpu' (CPU inference), or omit with --vram.",
    ),
    prompt_tokens: int | None = typer.Option(
        None, "--prompt-tokens", help="Prompt tokens per request (default: 512)."
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", help="Output tokens per request (default: 512)."
    ),
    quant: str | None = typer.Option(
        None, "--quant", help="fp32, fp16, bf16, fp8, int8, nf4, fp4, gptq, awq, native."
    ),
    group_size: int | None = typer.Option(
        None, "--group-size", help="GPTQ/AWQ group size (default: 128 or config.json's)."
    ),
    double_quant: bool | None = typer.Option(
        None,
        "--double-quant/--no-double-quant",
        help="bitsandbytes 4-bit double quantization (default: config.json's, else on).",
    ),
    kv_dtype: str = typer.Option("auto", "--kv-dtype", help="auto, fp16, bf16, fp8, fp32."),
    runtime: str = typer.Option(
        "hf",
        "--runtime",
        help="hf (transformers generate), vllm, or capplan (capplan serve's fixed-KV engine).",
    ),
    gpus: int = typer.Option(1, "--gpus", help="GPUs in total."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel size; replicas = gpus / tp."),
    margin: float = typer.Option(
        0.03, "--margin", help="Safety margin, fraction of GPU memory (hf runtime)."
    ),
    gpu_memory_utilization: float | None = typer.Option(
        None,
        "--gpu-memory-utilization",
        help="vLLM's (or capplan serve's) share of GPU memory (default: vLLM's release's, 0.92 "
        "from 0.20.0, 0.9 before; capplan 0.9).",
    ),
    vllm_version: str | None = typer.Option(
        None,
        "--vllm-version",
        help="vLLM release to plan for, e.g. 0.10.1.1 (default: the newest capplan knows).",
    ),
    enforce_eager: bool = typer.Option(
        False, "--enforce-eager", help="vLLM --enforce-eager: no CUDA graphs to budget for."
    ),
    max_model_len: int | None = typer.Option(
        None, "--max-model-len", help="vLLM max_model_len (default: the model's positions)."
    ),
    max_num_seqs: int | None = typer.Option(
        None, "--max-num-seqs", help="vLLM max_num_seqs (default: vLLM's for the GPU)."
    ),
    max_num_batched_tokens: int | None = typer.Option(
        None, "--max-num-batched-tokens", help="vLLM max_num_batched_tokens (default: vLLM's)."
    ),
    target_concurrency: int | None = typer.Option(
        None, "--target-concurrency", help="Answer: the max_tokens that allows N at once."
    ),
    clients: int = typer.Option(1, "--clients", help="Clients sharing the rate limit."),
    concurrency: int | None = typer.Option(
        None, "--concurrency", help="Evaluate every memory term and timing at N requests."
    ),
    alloc_conf: str = typer.Option(
        "default",
        "--alloc-conf",
        help="hf: default, or expandable (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True).",
    ),
    calibration: str | None = typer.Option(
        None, "--calibration", help="A `capplan calibrate` profile: timing from this host."
    ),
    vram: str | None = typer.Option(
        None, "--vram", help="Custom GPU memory (RAM with --gpu cpu), e.g. 24GiB."
    ),
    cores: int | None = typer.Option(
        None, "--cores", help="CPU cores for --gpu cpu (default: this machine's)."
    ),
    bandwidth: str | None = typer.Option(
        None, "--bandwidth", help="Custom memory bandwidth, e.g. 936GB/s."
    ),
    tflops: str | None = typer.Option(None, "--tflops", help="Custom dense FP16 TFLOPS."),
    output_format: str = typer.Option("table", "--format", "-f", help="table, json, markdown."),
    emit: tuple[str, Path] | None = typer.Option(
        None,
        "--emit",
        metavar="env|gunicorn|json FILE",
        help="Write the recommended server settings for `capplan serve`.",
    ),
) -> None:
    """Memory, safe concurrency, queue, timeouts and latency for a model on a GPU."""
    from capplan.errors import InputError

    if output_format not in FORMATS:
        raise _fail(f"unknown --format '{output_format}'; choose table, json or markdown")
    try:
        result = _run(
            model=model,
            gpu=gpu,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            quant=quant,
            group_size=group_size,
            double_quant=double_quant,
            kv_dtype=kv_dtype,
            runtime=runtime,
            gpus=gpus,
            tp=tp,
            margin=margin,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            vllm_version=vllm_version,
            enforce_eager=enforce_eager,
            target_concurrency=target_concurrency,
            clients=clients,
            concurrency=concurrency,
            alloc_conf=alloc_conf,
            calibration=calibration,
            vram=vram,
            cores=cores,
            bandwidth=bandwidth,
            tflops=tflops,
        )
        if emit is not None:
            from capplan.settings import check_emit_format

            check_emit_format(emit[0])
    except InputError as exc:
        raise _fail(str(exc)) from None
    _render(result, output_format)
    if emit is not None:
        _emit(result, emit[0], emit[1], _command_line(model, gpu, quant, result))


def _run(**options: Any) -> EstimateResult:
    from capplan.estimate.options import EstimateOptions, estimate_from_options

    return estimate_from_options(EstimateOptions(**options))


def _render(result: EstimateResult, output_format: str) -> None:
    from capplan.render import estimate as render

    if output_format == "json":
        typer.echo(render.to_json(result))
    elif output_format == "markdown":
        typer.echo(render.to_markdown(result), nl=False)
    else:
        from rich.console import Console

        render.print_table(result, Console())


def _command_line(model: str, gpu: str | None, quant: str | None, result: EstimateResult) -> str:
    """The estimate the settings came from, as a command that reproduces its main inputs."""
    w = result.workload
    parts = ["capplan estimate", f"--gpu {gpu or result.gpu.id}", f"--model {model}"]
    if quant:
        parts.append(f"--quant {quant}")
    parts += [f"--prompt-tokens {w.prompt_tokens}", f"--max-tokens {w.max_tokens}"]
    parts.append(f"--runtime {w.runtime}")
    if result.vllm is not None and not result.vllm.version_is_default:
        parts.append(f"--vllm-version {result.vllm.version}")
    if w.gpus > 1:
        parts.append(f"--gpus {w.gpus} --tp {w.tp}")
    if w.alloc_conf != "default":
        parts.append(f"--alloc-conf {w.alloc_conf}")
    if result.timing.calibrated:
        parts.append(f"--calibration {result.timing.basis.split(' ')[1]}")
    return " ".join(parts)


def _emit(result: EstimateResult, fmt: str, path: Path, source: str) -> None:
    from capplan.errors import InputError
    from capplan.settings import write

    if not result.fits:
        raise _fail(f"the deployment does not fit (see above); nothing written to {path}")
    try:
        write(result.settings.emitted(), fmt, path, source)
    except InputError as exc:
        raise _fail(str(exc)) from None
    print(f"wrote {fmt} settings to {path}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add `capplan estimate` to the root app."""
    app.command("estimate")(estimate)
