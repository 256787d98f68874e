"""Memory budget under `--runtime vllm`, the way vLLM itself sizes its KV cache.

    KV budget = total x gpu_memory_utilization - weights - profile-run activation peak
                - non-torch memory (CUDA context, NCCL buffers)

The budget is cut into pages of `block_size` (16) tokens across all layers. vLLM logs
"GPU KV cache size: N tokens" (num_blocks x 16) and "Maximum concurrency for L tokens per
request: Xx" (num_blocks / ceil(L / 16)), the latter assuming every request uses all
L = max_model_len tokens.

Follows the vLLM V1 engine on main (VLLM_REFERENCE): `vllm/config/cache.py`
(gpu_memory_utilization 0.92; releases before that change used 0.9),
`vllm/v1/core/kv_cache_utils.py` (get_num_blocks, get_max_concurrency_for_kv_cache_config,
_report_kv_cache_config, _check_enough_kv_cache_memory) and `vllm/engine/arg_utils.py`
(get_batch_defaults for the OpenAI server).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from capplan.estimate.architecture import ModelSpec
from capplan.estimate.kv_cache import kv_bytes_per_token
from capplan.estimate.memory_hf import CUDA_CONTEXT_BYTES, prefill_activation_bytes
from capplan.estimate.quantization import QuantScheme

VLLM_REFERENCE = "vLLM V1 engine as on main, default gpu_memory_utilization 0.92"
GPU_MEMORY_UTILIZATION = 0.92
BLOCK_SIZE = 16
NCCL_BYTES = 256 * 1024**2  # per rank when tensor parallel


def default_scheduler_limits(total_bytes: int, gpu_name: str) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM's OpenAI server picks by default:
    8192 / 1024 on >= 70 GiB GPUs other than A100, else 2048 / 256."""
    if total_bytes >= 70 * 1024**3 and "a100" not in gpu_name.lower():
        return 8192, 1024
    return 2048, 256


@dataclass(frozen=True)
class VllmBudget:
    """Every term of vLLM's budget, per rank."""

    total_bytes: int
    gpu_memory_utilization: float
    requested_bytes: int  # total x utilization
    weights_bytes: int
    activation_bytes: int  # profile run of max_num_batched_tokens
    non_torch_bytes: int
    kv_budget_bytes: int
    page_bytes: int  # one 16-token block across all layers
    kv_cache_tokens: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    request_tokens: int
    kv_per_token_bytes: int

    @property
    def num_blocks(self) -> int:
        return self.kv_cache_tokens // BLOCK_SIZE

    @property
    def blocks_per_full_request(self) -> int:
        """Pages one max_model_len sequence needs (vLLM: cdiv(max_model_len, block_size))."""
        return math.ceil(self.max_model_len / BLOCK_SIZE)

    @property
    def max_concurrency_full_length(self) -> float:
        """What vLLM logs: num_blocks / cdiv(max_model_len, 16)."""
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
    *,
    total_bytes: int,
    weights_bytes: int,
    kv_element_bytes: int,
    request_tokens: int,
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION,
    max_model_len: int | None = None,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 2048,
    tp: int = 1,
    non_torch_bytes: int | None = None,
) -> VllmBudget:
    requested = int(total_bytes * gpu_memory_utilization)
    profile = prefill_activation_bytes(spec, scheme, max_num_batched_tokens, tp)
    # The dummy sampler run holds fp32 logits and probabilities for max_num_seqs rows.
    sampler = 2 * max_num_seqs * spec.vocab * 4 // tp
    activations = max(profile, sampler)
    non_torch = (
        non_torch_bytes
        if non_torch_bytes is not None
        else CUDA_CONTEXT_BYTES + (NCCL_BYTES if tp > 1 else 0)
    )
    kv_budget = requested - weights_bytes - activations - non_torch
    per_token = kv_bytes_per_token(spec, kv_element_bytes, tp)
    page = BLOCK_SIZE * per_token
    tokens = max(0, kv_budget // page) * BLOCK_SIZE if page else 0
    return VllmBudget(
        total_bytes=total_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        requested_bytes=requested,
        weights_bytes=weights_bytes,
        activation_bytes=activations,
        non_torch_bytes=non_torch,
        kv_budget_bytes=kv_budget,
        page_bytes=page,
        kv_cache_tokens=int(tokens),
        max_model_len=max_model_len or spec.max_positions,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        request_tokens=request_tokens,
        kv_per_token_bytes=per_token,
    )
