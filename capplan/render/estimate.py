"""Render an `EstimateResult` as a rich table, Markdown or versioned JSON.

Table and Markdown share one list of sections, so both always show the same terms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from capplan.estimate.memory_capplan import CapplanBudget
from capplan.estimate.memory_vllm import VllmBudget
from capplan.estimate.result import EstimateResult, as_dict
from capplan.settings import ServerSettings
from capplan.units import format_bytes

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class Row:
    label: str
    value: str
    note: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    rows: list[Row]


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _s(value: float) -> str:
    return f"{value:,.1f} s"


def header_lines(r: EstimateResult) -> list[str]:
    w = r.workload
    model = r.model.hf_id or r.model.source
    deploy = f"{w.gpus} GPU" + ("s" if w.gpus > 1 else "")
    if w.tp > 1 or w.gpus > 1:
        deploy += f", tp {w.tp}, {w.replicas} replica" + ("s" if w.replicas > 1 else "")
    if r.gpu.kind == "cpu":
        deploy = f"{w.replicas} worker" + ("s" if w.replicas > 1 else "") + " (figures per worker)"
    return [
        f"model    {r.model.id} ({model}), {r.params:,} params, {r.quant.label} [{r.quant_source}]",
        f"gpu      {r.gpu.name} ({format_bytes(r.gpu.total_bytes)}, "
        f"{r.gpu.bandwidth_bytes_s / 1e9:.0f} GB/s, {r.gpu.tflops_fp16:g} TFLOPS) x {deploy}",
        f"workload prompt {w.prompt_tokens}{' (default)' if w.prompt_tokens_is_default else ''}"
        f" + max_tokens {w.max_tokens}{' (default)' if w.max_tokens_is_default else ''} tokens"
        f", runtime {w.runtime}, KV {w.kv_dtype}"
        + (f", alloc-conf {w.alloc_conf}" if w.runtime == "hf" and r.gpu.kind != "cpu" else ""),
        f"timing   {r.timing.basis}",
    ]


def _memory_section(r: EstimateResult) -> Section:
    m, w, wt = r.memory, r.workload, r.weights
    per = " per GPU" if w.tp > 1 else ""
    total_row = Row("GPU memory (total)", format_bytes(m.total_bytes), "what CUDA reports" + per)
    if r.gpu.kind == "cpu":
        total_row = Row("RAM", format_bytes(m.total_bytes), "this worker's share")
    rows = [
        total_row,
        Row(
            "weights",
            format_bytes(m.weights_bytes),
            f"{r.quant.rule}",
        ),
        Row(
            "  quantized data",
            format_bytes(wt.quantized_data_bytes),
            f"{wt.quantized_params:,} Linear params" if r.quant.quantizes_linears else "",
        ),
        Row("  scales / zeros", format_bytes(wt.scale_bytes)),
        Row(
            "  kept 16-bit" if r.quant.quantizes_linears else "  dense",
            format_bytes(wt.unquantized_bytes),
            f"{wt.unquantized_params:,} params",
        ),
        Row(
            "process (python, torch)" if r.gpu.kind == "cpu" else _non_torch_label(r),
            format_bytes(m.non_torch_bytes),
            "per worker" if r.gpu.kind == "cpu" else "not in memory_allocated",
        ),
    ]
    if r.vllm is not None:
        rows += _vllm_memory_rows(r.vllm)
    elif r.capplan is not None:
        rows += _capplan_memory_rows(r.capplan, m.concurrency, m.kv_in_use_bytes)
    else:
        n = m.concurrency
        rows += [
            Row(
                f"KV cache at {n} concurrent",
                format_bytes(m.kv_in_use_bytes),
                f"at the {m.peak_phase}",
            ),
            Row(
                "activations at the peak",
                format_bytes(m.activation_bytes),
                "prefill of every prompt" if m.peak_phase == "prefill" else "cat copy + logits",
            ),
            Row(
                "allocated peak",
                format_bytes(m.allocated_peak_bytes),
                "weights + KV + activations: past total, out-of-memory",
            ),
            Row(
                "allocator cache",
                format_bytes(m.allocator_reserve_bytes),
                "reserved beyond allocated"
                + (": blocks the growing cache leaves behind" if w.alloc_conf == "default" else ""),
            ),
            Row(
                "device peak" if r.gpu.kind != "cpu" else "process peak",
                format_bytes(m.peak_bytes),
                "context + reserved: what nvidia-smi shows" if r.gpu.kind != "cpu" else "",
            ),
            Row("safety margin", format_bytes(m.margin_bytes), f"{w.margin_fraction:.0%} of total"),
        ]
    rows += [
        Row("KV per token", format_bytes(m.kv_per_token_bytes), _kv_formula(r)),
        Row(
            "KV per request",
            format_bytes(m.kv_per_request_bytes),
            f"{w.request_tokens} tokens (prompt + max_tokens)",
        ),
    ]
    if r.vllm is not None:
        rows += [
            Row("left for KV", format_bytes(max(0, m.kv_budget_bytes)), "vLLM's KV pool"),
            Row(f"KV in use at {m.concurrency} concurrent", format_bytes(m.kv_in_use_bytes), ""),
        ]
    rows.append(Row("free", format_bytes(m.free_bytes), f"unused at {m.concurrency} concurrent"))
    unit = " per worker" if r.gpu.kind == "cpu" else " per GPU"
    at = f" at {m.concurrency} concurrent" + (" (--concurrency)" if w.concurrency else "")
    return Section("Memory" + (unit if w.gpus > 1 else "") + at, rows)


def _kv_formula(r: EstimateResult) -> str:
    s = r.model
    heads = s.kv_heads // r.workload.tp if r.workload.tp > 1 else s.kv_heads
    element = 4 if r.workload.kv_dtype == "fp32" else 1 if r.workload.kv_dtype == "fp8" else 2
    return f"2 x {s.layers} layers x {heads} kv heads x {s.head_dim} head_dim x {element} B"


def _non_torch_label(r: EstimateResult) -> str:
    """vLLM 0.9.1+ charges only non-torch growth; the CUDA context is outside its budget."""
    if r.vllm is None:
        return "CUDA context + workspaces"
    return "non-torch memory (vLLM)"


def _capplan_memory_rows(b: CapplanBudget, at: int, kv_in_use: int) -> list[Row]:
    """capplan serve's engine: everything allocated at start, so the peak is a sum."""
    w = b.workspace
    return [
        Row(
            "KV pool",
            format_bytes(b.pool_bytes),
            f"{b.num_blocks:,} blocks x {b.block_size} tokens + 1 trash block, allocated at start",
        ),
        Row(f"  reserved at {at} concurrent", format_bytes(kv_in_use), "prompt + max_tokens each"),
        Row(
            "engine workspace",
            format_bytes(w.total_bytes),
            f"block table + gather buffers + max(decode of {b.limits.max_batch} rows, prefill)",
        ),
        Row("  K/V gather buffers", format_bytes(w.gather_bytes), "allocated at start"),
        Row("  decode step", format_bytes(w.decode_bytes), "activations, mask, logits, sampling"),
        Row(
            "  prefill chunk",
            format_bytes(w.prefill_bytes),
            f"{b.limits.prefill_chunk_tokens} tokens: activations, mask, logits",
        ),
        Row("allocated peak", format_bytes(b.allocated_bytes), "weights + pool + workspace"),
        Row("device peak", format_bytes(b.peak_bytes), "context + allocated (expandable segments)"),
        Row(
            "outside the plan",
            format_bytes(b.total_bytes - b.peak_bytes),
            f"gpu_memory_utilization {b.gpu_memory_utilization}"
            if b.gpu_memory_utilization
            else "RAM the pool leaves free",
        ),
    ]


def _vllm_memory_rows(v: VllmBudget) -> list[Row]:
    """vLLM's own terms, each with what it follows."""
    graphs = f"{v.runner.upper()} runner, {v.version}"
    if v.enforce_eager:
        graphs = "--enforce-eager"
    elif not v.cudagraph_bytes:
        graphs += ": not subtracted (graphs live outside vLLM's share)"
    return [
        Row("rotary cos/sin cache", format_bytes(v.rotary_cache_bytes), "counted in weights above"),
        Row(
            "profile peak",
            format_bytes(v.activation_bytes),
            "max(dummy sampler, forward) below",
        ),
        Row(
            "  dummy sampler run",
            format_bytes(v.sampler_bytes),
            "V2 runner: fixed peak calibrated on published logs"
            if v.sampler == "v2"
            else f"{v.sampler} path, min(max_num_seqs, tokens) x vocab logits, not split by tp",
        ),
        Row(
            "  forward",
            format_bytes(v.forward_bytes),
            f"max_num_batched_tokens={v.max_num_batched_tokens}",
        ),
        Row("CUDA-graph estimate", format_bytes(v.cudagraph_bytes), graphs),
        Row(
            "outside vLLM's share",
            format_bytes(v.total_bytes - v.requested_bytes),
            f"total x (1 - gpu_memory_utilization {v.gpu_memory_utilization})",
        ),
    ]


def _vllm_section(r: EstimateResult) -> Section | None:
    v = r.vllm
    if v is None:
        return None
    default = " (default: newest known)" if v.version_is_default else ""
    return Section(
        f"vLLM {v.version}{default}, release line {v.version_line}, {v.runner.upper()} runner",
        [
            Row("GPU KV cache size:", f"{v.kv_cache_tokens:,} tokens", "as vLLM logs it"),
            Row(
                f"Maximum concurrency for {v.max_model_len:,} tokens per request:",
                f"{v.max_concurrency_full_length:.2f}x",
                "as vLLM logs it (every request at max_model_len)",
            ),
            Row(
                f"concurrency for {v.request_tokens} tokens per request",
                str(v.workload_concurrency),
                f"16-token pages; capped by max_num_seqs {v.max_num_seqs}",
            ),
            Row("starts", "yes" if v.starts else "no", "KV cache must hold one max_model_len"),
        ],
    )


def _capacity_section(r: EstimateResult) -> Section:
    w = r.workload
    rows = [
        Row("recommended concurrency", str(r.concurrency), "per replica" if w.replicas > 1 else ""),
        Row(
            "  bounded by",
            r.concurrency_bound.split(":")[0],
            r.concurrency_bound.split(":", 1)[-1].strip(),
        ),
    ]
    if r.hf is not None:
        rows.append(
            Row(
                "out-of-memory past",
                f"{r.zero_margin_concurrency} requests",
                "allocated peak + context over total",
            )
        )
    if w.replicas > 1:
        rows.append(Row("total concurrency", str(r.total_concurrency), f"{w.replicas} replicas"))
    rows.append(
        Row(
            "compute-bound past",
            f"{r.compute_bound_batch:,} requests",
            "more adds latency, not throughput; caps max_concurrent",
        )
    )
    rows.append(Row("largest single request", f"{r.largest_context:,} tokens", "prompt + output"))
    if w.target_concurrency is not None:
        value = "none" if r.target_max_tokens is None else str(r.target_max_tokens)
        rows.append(
            Row(
                f"max_tokens for {w.target_concurrency} concurrent",
                value,
                f"with prompt {w.prompt_tokens}",
            )
        )
    return Section("Capacity", rows)


def _timing_section(r: EstimateResult) -> Section:
    t, w = r.timing, r.workload
    hypothetical = "" if r.fits else " (if it fit)"
    rows = [
        Row("prefill", _ms(t.prefill_ms), f"{w.prompt_tokens}-token prompt"),
        Row(
            "decode at 1 request",
            f"{t.decode_ms_per_token_c1:.1f} ms/token",
            f"{t.output_tokens_per_s_c1:.1f} tokens/s",
        ),
        Row("one request, alone", _s(t.request_s_c1), f"prefill + {w.max_tokens} tokens"),
    ]
    if t.concurrency > 1:
        rows += [
            Row(
                f"decode at {t.concurrency} requests",
                f"{t.decode_ms_per_token_at_concurrency:.1f} ms/step",
                f"{t.output_tokens_per_s_at_concurrency:.1f} tokens/s together",
            ),
            Row(f"one request at {t.concurrency}", _s(t.request_s_at_concurrency), ""),
        ]
    rows.append(Row("throughput", f"{t.requests_per_min:.1f} requests/min", "all replicas"))
    rows.append(
        Row(
            "step floor",
            f"{t.floor_ms:.1f} ms",
            f"the runtime's cost per forward; the step at {t.concurrency} is "
            f"{t.decode_bound}-bound",
        )
    )
    if t.overhead_ms:
        rows.append(Row("request overhead", f"{t.overhead_ms:.1f} ms", "before the first token"))
    basis = "calibrated" if t.calibrated else "uncalibrated: see the timing line above"
    return Section(f"Timing ({basis})" + hypothetical, rows)


_SETTING_NOTES = {
    "max_concurrent": "memory-safe, at most the compute-bound batch",
    "queue_size": "two rounds; 503 when full",
    "queue_timeout_s": "3 x two service times at max_concurrent",
    "request_timeout_s": "3 x the service time at max_concurrent",
    "max_tokens_cap": "planned max_tokens",
    "max_context": "the model's (or runtime's) own limit, so chat templates fit",
    "rate_limit": "per client: a minute's share, half of it per hour",
    "vram_guard": "refuse new work above this fraction",
    "max_batch": "decode batch",
    "batch_wait_ms": "half a decode step",
    "workers": "each loads its own weights: 1 per GPU; CPU by cores and RAM",
    "threads": "async workers: generation runs on the engine's thread",
    "drain_timeout_s": "finish in-flight requests on shutdown",
    "kv_cache_memory": "capplan: the KV pool, allocated at start",
    "prefill_chunk_tokens": "prompt tokens per prefill forward",
}


def _settings_section(settings: ServerSettings) -> Section:
    rows = [
        Row(key, str(value), _SETTING_NOTES.get(key, ""))
        for key, value in settings.emitted().items()
    ]
    return Section("Recommended server settings (capplan serve / --emit)", rows)


def sections(r: EstimateResult) -> list[Section]:
    """Every section of the report, in order."""
    found = [_memory_section(r), _vllm_section(r), _capacity_section(r), _timing_section(r)]
    if r.fits:
        found.append(_settings_section(r.settings))
    if r.alternatives:
        found.append(
            Section(
                "What would fit",
                [Row(a.change, f"{a.concurrency} concurrent", a.detail) for a in r.alternatives],
            )
        )
    return [s for s in found if s is not None]


def to_json(r: EstimateResult) -> str:
    return json.dumps(as_dict(r), indent=2)


def to_markdown(r: EstimateResult) -> str:
    lines = [f"# capplan estimate: {r.model.id} on {r.gpu.name}", ""]
    lines += [f"**{r.verdict}**", ""]
    lines += [f"- {line}" for line in header_lines(r)]
    for section in sections(r):
        lines += ["", f"## {section.title}", "", "| term | value | note |", "|---|---|---|"]
        lines += [f"| {row.label} | {row.value} | {row.note} |" for row in section.rows]
    lines += ["", "## Assumptions", ""] + [f"- {a}" for a in r.assumptions]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def print_table(r: EstimateResult, console: Console) -> None:
    from rich.table import Table

    style = "bold green" if r.fits else "bold red"
    console.print(r.verdict, style=style, highlight=False)
    for line in header_lines(r):
        console.print(line, highlight=False)
    for section in sections(r):
        table = Table(title=section.title, title_justify="left", show_header=False, box=None)
        table.add_column("term", style="bold")
        table.add_column("value", justify="right")
        table.add_column("note", style="dim")
        for row in section.rows:
            table.add_row(row.label, row.value, row.note)
        console.print()
        console.print(table)
    console.print()
    console.print("Assumptions", style="bold")
    for item in r.assumptions:
        console.print(f"  - {item}", highlight=False)
    if r.notes:
        console.print("Notes", style="bold")
        for item in r.notes:
            console.print(f"  - {item}", highlight=False)
