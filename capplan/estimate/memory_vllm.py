"""Memory budget under `--runtime vllm`, the way the chosen vLLM release sizes its KV cache.

    KV budget = total x gpu_memory_utilization - (weights + rotary cache)
                - max(forward peak, dummy-sampler peak) - non-torch memory - CUDA-graph estimate

`total` is what cudaMemGetInfo reports (the catalog's torch figure). Every term depends on the
release line (`capplan/catalog/vllm.toml`, read in the released wheels, each figure with its
source). The budget is cut into pages of 16 tokens across all layers. vLLM logs "GPU KV cache
size: N tokens" (num_blocks x 16) and "Maximum concurrency for L tokens per request: Xx"
(num_blocks / ceil(L / 16) from 0.9.1; tokens / L before), L = max_model_len.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from capplan.catalog.vllm_versions import (
    VllmVersion,
    sampler_path,
    scheduler_defaults,
)
from capplan.estimate.architecture import ModelSpec
from capplan.estimate.kv_cache import kv_bytes_per_token
from capplan.estimate.quantization import QuantScheme
from capplan.units import format_bytes

BLOCK_SIZE = 16
NCCL_BYTES = 256 * 1024**2  # per rank under tensor parallel (assumed; no log found)
ASSUMED_SMS = 108  # Triton sampler buffer rows when the GPU's SM count is unknown


def default_scheduler_limits(
    version: VllmVersion, total_bytes: int, gpu_name: str
) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM's OpenAI server picks by default."""
    d, name = scheduler_defaults(), gpu_name.lower()
    big = total_bytes >= 70 * 1024**3
    large = {
        "name": "h100" in name or "h200" in name,
        "memory": big,
        "memory-not-a100": big and "a100" not in name,
    }[version.large_gpu]
    if large:
        return d.large_max_num_batched_tokens, d.large_max_num_seqs
    return d.small_max_num_batched_tokens, version.small_max_num_seqs


@dataclass(frozen=True)
class ProfileTerms:
    """What the profile run and startup take besides weights and KV, per rank."""

    runner: str  # "v1" or "v2" (Model Runner V2)
    sampler: str  # native | triton | flashinfer | v2
    sampler_bytes: int  # dummy sampler run (never split by tensor parallel)
    forward_bytes: int  # forward of max_num_batched_tokens
    rotary_cache_bytes: int  # cos/sin cache, counted in "Model loading took"
    non_torch_bytes: int
    cudagraph_bytes: int  # estimate subtracted from the budget (0 when not)

    @property
    def activation_bytes(self) -> int:
        return max(self.sampler_bytes, self.forward_bytes)


def uses_v2_runner(version: VllmVersion, spec: ModelSpec, scheme: QuantScheme) -> bool:
    """Model Runner V2 is the default for this model in this release (dense models only)."""
    types = version.v2_model_types
    if "*" not in types and spec.model_type not in types:
        return False
    return version.v2_quantized or not scheme.quantizes_linears


def profile_terms(
    version: VllmVersion,
    spec: ModelSpec,
    scheme: QuantScheme,
    *,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    tp: int = 1,
    sm_count: int = 0,
    enforce_eager: bool = False,
) -> ProfileTerms:
    v2 = uses_v2_runner(version, spec, scheme)
    path = sampler_path("v2" if v2 else version.sampler)
    act = 4 if spec.dtype == "fp32" else 2
    tokens, rows = max_num_batched_tokens, min(max_num_seqs, max_num_batched_tokens)
    # Every rank all-gathers full-vocabulary logits, so the sampler is not divided by tp; the
    # hidden states of every scheduled token stay alive beside them.
    sampler = path.fixed_bytes or (
        rows * spec.vocab * path.bytes_per_element + tokens * spec.hidden * act
    )
    if path.sm_buffer:
        sampler += min(sm_count or ASSUMED_SMS, rows) * spec.vocab * 4
    # Gated MLP (gate_up 2I + act I), residual/norm/o/down ~3H, q/k/v: the live set of a
    # compiled or eager forward without KV (FlashAttention, no score matrix).
    qkv = (spec.heads + 2 * spec.kv_heads) * spec.head_dim // tp
    forward = tokens * (3 * spec.intermediate // tp + 3 * spec.hidden + qkv) * act
    graphs = version.v2_cudagraph_bytes if v2 else version.cudagraph_bytes
    return ProfileTerms(
        runner="v2" if v2 else "v1",
        sampler=path.name,
        sampler_bytes=sampler,
        forward_bytes=forward,
        rotary_cache_bytes=spec.max_positions * spec.head_dim * act,
        non_torch_bytes=version.non_torch_bytes + (NCCL_BYTES if tp > 1 else 0),
        cudagraph_bytes=0 if enforce_eager else graphs,
    )


@dataclass(frozen=True)
class VllmBudget:
    """Every term of vLLM's budget, per rank, with the release it follows."""

    version: str
    version_line: str
    version_is_default: bool
    runner: str
    sampler: str
    enforce_eager: bool
    total_bytes: int
    gpu_memory_utilization: float
    requested_bytes: int  # total x utilization
    weights_bytes: int
    rotary_cache_bytes: int
    sampler_bytes: int
    forward_bytes: int
    activation_bytes: int  # profile-run peak: max(sampler, forward)
    non_torch_bytes: int
    cudagraph_bytes: int
    kv_budget_bytes: int
    page_bytes: int  # one 16-token block across all layers
    kv_cache_tokens: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    request_tokens: int
    kv_per_token_bytes: int
    whole_page_concurrency: bool = True
    basis: dict[str, str] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return self.kv_cache_tokens // BLOCK_SIZE

    @property
    def blocks_per_full_request(self) -> int:
        """Pages one max_model_len sequence needs (vLLM: cdiv(max_model_len, block_size))."""
        return math.ceil(self.max_model_len / BLOCK_SIZE)

    @property
    def max_concurrency_full_length(self) -> float:
        """What vLLM logs: num_blocks / cdiv(max_model_len, 16) (0.9.1+), tokens / L before."""
        if not self.whole_page_concurrency:
            return self.kv_cache_tokens / self.max_model_len if self.max_model_len else 0.0
        pages = self.blocks_per_full_request
        return self.num_blocks / pages if pages else 0.0

    @property
    def request_pages(self) -> int:
        return math.ceil(self.request_tokens / BLOCK_SIZE)

    @property
    def workload_concurrency(self) -> int:
        """Sequences of the actual prompt + max_tokens that fit at once, capped by max_num_seqs."""
        if self.request_pages == 0:
            return 0
        fit = self.num_blocks // self.request_pages
        return int(min(self.max_num_seqs, fit))

    @property
    def starts(self) -> bool:
        """vLLM refuses to start when one max_model_len sequence does not fit the KV cache
        (`_check_enough_kv_cache_memory`: its pages, not its tokens, must fit)."""
        return self.max_model_len > 0 and self.num_blocks >= self.blocks_per_full_request

    @property
    def fits(self) -> bool:
        return self.starts and self.workload_concurrency >= 1


def vllm_budget(
    spec: ModelSpec,
    scheme: QuantScheme,
    version: VllmVersion,
    *,
    total_bytes: int,
    weights_bytes: int,
    kv_element_bytes: int,
    request_tokens: int,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 2048,
    tp: int = 1,
    sm_count: int = 0,
    enforce_eager: bool = False,
) -> VllmBudget:
    utilization = gpu_memory_utilization or version.gpu_memory_utilization
    requested = int(total_bytes * utilization)
    terms = profile_terms(
        version,
        spec,
        scheme,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        tp=tp,
        sm_count=sm_count,
        enforce_eager=enforce_eager,
    )
    loaded = weights_bytes + terms.rotary_cache_bytes
    kv_budget = (
        requested - loaded - terms.activation_bytes - terms.non_torch_bytes - terms.cudagraph_bytes
    )
    per_token = kv_bytes_per_token(spec, kv_element_bytes, tp)
    page = BLOCK_SIZE * per_token
    tokens = max(0, kv_budget // page) * BLOCK_SIZE if page else 0
    return VllmBudget(
        version=version.version,
        version_line=version.line,
        version_is_default=version.is_default,
        runner=terms.runner,
        sampler=terms.sampler,
        enforce_eager=enforce_eager,
        total_bytes=total_bytes,
        gpu_memory_utilization=utilization,
        requested_bytes=requested,
        weights_bytes=weights_bytes,
        rotary_cache_bytes=terms.rotary_cache_bytes,
        sampler_bytes=terms.sampler_bytes,
        forward_bytes=terms.forward_bytes,
        activation_bytes=terms.activation_bytes,
        non_torch_bytes=terms.non_torch_bytes,
        cudagraph_bytes=terms.cudagraph_bytes,
        kv_budget_bytes=kv_budget,
        page_bytes=page,
        kv_cache_tokens=int(tokens),
        max_model_len=max_model_len or spec.max_positions,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        request_tokens=request_tokens,
        kv_per_token_bytes=per_token,
        whole_page_concurrency=version.whole_page_concurrency,
        basis=budget_basis(
            version,
            terms,
            given_utilization=gpu_memory_utilization is not None,
            tp=tp,
            enforce_eager=enforce_eager,
            sm_count=sm_count,
        ),
    )


def budget_basis(
    version: VllmVersion,
    terms: ProfileTerms,
    *,
    given_utilization: bool,
    tp: int,
    enforce_eager: bool,
    sm_count: int,
) -> dict[str, str]:
    """Where each term of the budget comes from, for the JSON and the assumptions."""
    path, src = sampler_path(terms.sampler), version.sources
    graphs = src["v2_cudagraph_gib" if terms.runner == "v2" else "cudagraph_gib"]
    nccl = "; + 256 MiB NCCL per rank under tp (assumed, no log)" if tp > 1 else ""
    return {
        "gpu_memory_utilization": (
            "--gpu-memory-utilization" if given_utilization else src["gpu_memory_utilization"]
        ),
        "runner": src["v2_model_types"] + ("" if terms.runner == "v2" else " (not this model)"),
        "sampler": f"{path.basis}: {path.source}"
        + (f"; SM count unknown, {ASSUMED_SMS} assumed" if path.sm_buffer and not sm_count else ""),
        "forward": "inferred: live set of the profile forward of max_num_batched_tokens "
        "(3 x intermediate + 3 x hidden + q/k/v per token); a 0.18.0 eager log within 1%",
        "non_torch": f"{version.non_torch_scope}; {src['non_torch_gib']}{nccl}",
        "cudagraph": "--enforce-eager: no CUDA graphs" if enforce_eager else graphs,
        "rotary_cache": "code: vLLM's cos/sin cache, max_position_embeddings x head_dim in the "
        "model dtype, allocated with the weights",
        "scheduler_defaults": f"{src['large_gpu']}; {src['small_max_num_seqs']}",
    }


def vllm_assumptions(v: VllmBudget) -> list[str]:
    """The vLLM lines of an estimate's assumptions: the release, every term and its basis."""
    eager = ", --enforce-eager" if v.enforce_eager else ""
    graphs = (
        f"CUDA-graph estimate {format_bytes(v.cudagraph_bytes)} subtracted"
        if v.cudagraph_bytes
        else "no CUDA-graph memory subtracted (graphs live in the 1 - utilization headroom)"
    )
    return [
        f"runtime vllm {v.version} (release line {v.version_line}, {v.runner.upper()} model "
        f"runner{eager}): gpu_memory_utilization {v.gpu_memory_utilization}, "
        f"max_num_batched_tokens {v.max_num_batched_tokens}, max_num_seqs {v.max_num_seqs}, "
        f"max_model_len {v.max_model_len}, block size {BLOCK_SIZE}",
        f"vLLM profile peak {format_bytes(v.activation_bytes)} = max(dummy sampler "
        f"{format_bytes(v.sampler_bytes)} [{v.sampler}; {v.basis['sampler'].split(':')[0]}], "
        f"forward {format_bytes(v.forward_bytes)}); non-torch {format_bytes(v.non_torch_bytes)}; "
        f"rotary cache {format_bytes(v.rotary_cache_bytes)}; {graphs}",
    ]
