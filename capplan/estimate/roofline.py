"""Step timing: the roofline, with the runtime's floor under it.

Decode reads every weight once per step plus the batch's KV (bandwidth bound); prefill does
~2 x params FLOPs per token plus attention (compute bound). Neither is ever faster than the
runtime's floor: the host's cost of launching one forward pass (eager PyTorch launches every
kernel from Python; `capplan/catalog/runtimes.toml`). A step takes the largest of the three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from capplan.estimate.architecture import LINEAR, ModelSpec, tensor_groups

# Real kernels reach about 80% of datasheet bandwidth and well under peak FLOPS.
BANDWIDTH_EFFICIENCY = 0.8
COMPUTE_EFFICIENCY = 0.5


@dataclass(frozen=True)
class Roofline:
    """Timing model for one rank of one replica; all figures per rank."""

    weights_bytes: int  # weights read once per decode step
    matmul_params: int  # params that do 2 FLOPs per token in prefill (decoder Linears)
    attention_width: int  # layers x heads x head_dim (per rank) for the T^2 attention term
    kv_bytes_per_token: int
    bandwidth_bytes_s: float
    tflops: float
    decode_slowdown: float = 1.0
    prefill_slowdown: float = 1.0
    bandwidth_efficiency: float = BANDWIDTH_EFFICIENCY
    compute_efficiency: float = COMPUTE_EFFICIENCY
    floor_ms: float = 0.0  # one forward pass, whatever the batch: the runtime's host cost
    host_ms_per_sequence: float = 0.0  # host work each sequence adds to a step (sampling, ...)
    overhead_ms: float = 0.0  # per request, before its first token (HTTP, tokenizing, queue hop)

    @property
    def effective_bandwidth(self) -> float:
        return self.bandwidth_bytes_s * self.bandwidth_efficiency

    @property
    def decode_step_base_ms(self) -> float:
        """One decode step with an empty cache: all weights read once (x kernel slowdown)."""
        if self.effective_bandwidth <= 0:
            return 0.0
        return self.weights_bytes * self.decode_slowdown / self.effective_bandwidth * 1e3

    @property
    def decode_ms_per_kv_token(self) -> float:
        """Extra ms per step for each KV token held by the batch (read once per step)."""
        if self.effective_bandwidth <= 0:
            return 0.0
        return self.kv_bytes_per_token / self.effective_bandwidth * 1e3

    @property
    def decode_compute_ms_per_sequence(self) -> float:
        """Compute time one sequence adds to a decode step (2 x params FLOPs per token)."""
        return self.prefill_ms_per_token

    def decode_step_ms(self, total_kv_tokens: int, batch: int = 1) -> float:
        """One decode step: the largest of memory traffic, the batch's matmul FLOPs and the
        runtime's floor."""
        return max(
            self.host_ms(batch),
            self.decode_memory_ms(total_kv_tokens),
            batch * self.decode_compute_ms_per_sequence,
        )

    def host_ms(self, batch: int = 1) -> float:
        """The runtime's host cost of one forward over `batch` sequences."""
        return self.floor_ms + batch * self.host_ms_per_sequence

    def decode_memory_ms(self, total_kv_tokens: float) -> float:
        return self.decode_step_base_ms + total_kv_tokens * self.decode_ms_per_kv_token

    def decode_bound(self, total_kv_tokens: int, batch: int = 1) -> str:
        """Which term sets the step: "floor" (the host), "memory" or "compute"."""
        terms = {
            "floor": self.host_ms(batch),
            "memory": self.decode_memory_ms(total_kv_tokens),
            "compute": batch * self.decode_compute_ms_per_sequence,
        }
        return max(terms, key=lambda k: terms[k])

    @property
    def compute_bound_batch(self) -> int:
        """The batch past which the per-sequence costs (matmuls, host work) outweigh the fixed
        ones (the floor, one read of the weights): from there on the step grows with the batch,
        so more concurrency adds latency faster than throughput (below it, a bigger batch rides
        along almost for free)."""
        per_sequence = self.decode_compute_ms_per_sequence + self.host_ms_per_sequence
        if per_sequence <= 0:
            return 1 << 30
        return max(1, math.ceil(max(self.floor_ms, self.decode_step_base_ms) / per_sequence))

    @property
    def prefill_ms_per_token(self) -> float:
        flops = 2 * self.matmul_params
        return flops / (self.tflops * 1e12 * self.compute_efficiency) * 1e3 * self.prefill_slowdown

    def prefill_compute_ms(self, tokens: float, prompts: float = 1) -> float:
        """The compute of prefilling `prompts` prompts of `tokens` tokens: matmuls and causal
        attention."""
        attention_flops = 2 * self.attention_width * tokens * tokens  # QK^T and PV, causal half
        return prompts * (
            tokens * self.prefill_ms_per_token
            + attention_flops
            / (self.tflops * 1e12 * self.compute_efficiency)
            * 1e3
            * self.prefill_slowdown
        )

    def prefill_ms(self, tokens: int, prompts: int = 1) -> float:
        """Prefill of `prompts` prompts of `tokens` tokens in one forward: its compute, never
        faster than one read of the weights or the floor."""
        return max(
            self.prefill_compute_ms(tokens, prompts),
            self.decode_step_base_ms,
            self.host_ms(prompts),
        )

    def request_ms(self, prompt_tokens: int, max_tokens: int, concurrency: int) -> float:
        """Worst-case service time: the request's overhead, prefill, then max_tokens - 1 decode
        steps (prefill yields the first token) while `concurrency` sequences of the same shape
        share each step (their KV read every step)."""
        decode = 0.0
        steps = max(max_tokens - 1, 0)
        if steps:
            mean_context = prompt_tokens + steps / 2
            decode = steps * self.decode_step_ms(int(concurrency * mean_context), concurrency)
        # Alone, the prefill's own floor (one read of the weights, the host) is the step's.
        return first_token_ms(self.overhead_ms, self.prefill_ms(prompt_tokens), 0.0) + decode


def first_token_ms(overhead_ms: float, prefill_ms: float, batch_step_ms: float) -> float:
    """A request's time to its first token: its overhead (HTTP, tokenizing) and then its
    prefill, which is never faster than one decode step of the batch it joins. The one formula
    for the estimate, validate and plan (the emulated backend schedules the same)."""
    return overhead_ms + max(prefill_ms, batch_step_ms)


def matmul_params(spec: ModelSpec) -> int:
    """Decoder Linear params: the ones every prompt token multiplies through."""
    return sum(g.numel for g in tensor_groups(spec) if g.role == LINEAR)


def attention_width(spec: ModelSpec) -> int:
    return spec.layers * spec.heads * spec.head_dim
