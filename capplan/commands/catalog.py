"""`capplan catalog gpus|models`: list the built-in catalogs with their sources."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from capplan.catalog.loader import GpuEntry

catalog_app = typer.Typer(
    name="catalog",
    help="List the built-in GPU and model catalogs (every entry with its source).",
    no_args_is_help=True,
)


def _checked(checks: tuple[str, ...]) -> str:
    """Short table marks for secondary-source fields; the full text goes under Sources."""
    return ", ".join(f"(check) {c.split()[0]}" for c in checks)


def _check_format(output_format: str) -> None:
    if output_format not in ("table", "json"):
        print(f"error: unknown --format '{output_format}'; choose table or json", file=sys.stderr)
        raise typer.Exit(2)


@catalog_app.command("gpus")
def gpus(
    output_format: str = typer.Option("table", "--format", "-f", help="table or json."),
) -> None:
    """GPUs: memory as torch/vLLM and nvidia-smi report it, bandwidth, FP16 TFLOPS, source."""
    from capplan.catalog import loader

    _check_format(output_format)
    entries = list(loader.gpus().values())
    if output_format == "json":
        rows = [
            {**asdict(e), "total_bytes": e.total_bytes, "nvidia_smi_bytes": e.nvidia_smi_bytes}
            for e in entries
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="GPU catalog ((check) = from a secondary source)", title_justify="left")
    for column in ("id", "name", "torch/vLLM", "nvidia-smi", "GB/s", "TFLOPS", "bf16/fp8"):
        table.add_column(column, no_wrap=column != "name")
    table.add_column("notes", overflow="fold", ratio=1)
    for e in entries:
        table.add_row(
            e.id,
            e.name,
            _torch_total(e),
            f"{e.total_mib} MiB" + (" (check)" if "total_mib" in e.check else ""),
            f"{e.bandwidth_gbs:g}",
            f"{e.tflops_fp16:g}" + (" (check)" if "tflops_fp16" in e.check else ""),
            f"{'y' if e.bf16 else 'n'}/{'y' if e.fp8 else 'n'}",
            "; ".join([e.notes, _checked(e.check)]).strip("; "),
        )
    console = Console()
    console.print(table)
    console.print(
        "torch/vLLM: the total cudaMemGetInfo reports, which both runtimes plan with; '-': "
        "unknown, nvidia-smi's is used"
    )
    console.print("Sources", style="bold")
    for e in entries:
        checks = "".join(f"; (check) {c}" for c in e.check)
        console.print(f"  {e.id}: {e.source}{checks}", highlight=False)


def _torch_total(e: GpuEntry) -> str:
    if e.torch_total_gib is None:
        return "-"
    checked = any(c.split()[0] == "torch_total_gib" for c in e.check)
    return f"{e.torch_total_gib:.2f} GiB" + (" (check)" if checked else "")


@catalog_app.command("models")
def models(
    output_format: str = typer.Option("table", "--format", "-f", help="table or json."),
) -> None:
    """Models: the config.json fields the estimator uses, KV per token, source."""
    from capplan.catalog import loader
    from capplan.estimate.kv_cache import kv_bytes_per_token, kv_dtype_bytes
    from capplan.estimate.model_spec import spec_from_entry

    _check_format(output_format)
    entries = list(loader.models().values())
    if output_format == "json":
        typer.echo(json.dumps([asdict(e) for e in entries], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Model catalog (append -int8, -nf4, -awq, -gptq, -fp8, ... to quantize)",
        title_justify="left",
    )
    columns = ("id", "layers", "hidden", "heads/kv", "head_dim", "tied", "params", "KV/tok")
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("notes", overflow="fold", ratio=1)
    for e in entries:
        spec = spec_from_entry(e)
        head_dim = spec.head_dim
        # Per token while no sliding window is full, in the model's own dtype.
        kv = kv_bytes_per_token(spec, kv_dtype_bytes(spec.dtype))
        notes = [f"window {e.sliding_window} ({e.sliding_layers})"] if e.sliding_window else []
        notes += [_checked(e.check)] if e.check else []
        table.add_row(
            e.id,
            str(e.layers),
            str(e.hidden),
            f"{e.heads}/{e.kv_heads}",
            str(head_dim) if e.head_dim else f"({head_dim})",
            "yes" if e.tied_embeddings else "no",
            f"{e.params / 1e9:.2f} B",
            f"{kv // 1024} KiB",
            "; ".join(notes),
        )
    console = Console()
    console.print(table)
    console.print(
        "head_dim in parentheses: hidden / heads (no head_dim in config.json); KV/tok in the "
        "model's dtype, before any sliding window is full"
    )
    console.print("Sources", style="bold")
    for e in entries:
        checks = "".join(f"; (check) {c}" for c in e.check)
        console.print(f"  {e.id}: {e.hf_id}, {e.source}{checks}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `capplan catalog gpus|models` to the root app."""
    app.add_typer(catalog_app, name="catalog")
