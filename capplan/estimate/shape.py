"""A decoder's sizes on one tensor-parallel rank: what the memory models and the engine share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from capplan.estimate.kv_cache import kv_heads_per_rank

if TYPE_CHECKING:
    from capplan.estimate.architecture import ModelSpec
    from capplan.estimate.quantization import QuantScheme


@dataclass(frozen=True)
class DecoderShape:
    """The sizes memory depends on, per rank, and the bytes of one element. The estimator builds
    it from a catalog spec (`from_spec`); the engine from the model it loaded."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim of q and k
    act_bytes: int = 2  # hidden states and logits as the model computes them (fp32 4, else 2)
    kv_bytes: int = 2  # one KV element

    @classmethod
    def from_spec(
        cls, spec: ModelSpec, scheme: QuantScheme, kv_element_bytes: int = 2, tp: int = 1
    ) -> DecoderShape:
        return cls(
            layers=spec.layers,
            hidden=spec.hidden,
            intermediate=spec.intermediate // tp,
            heads=max(1, spec.heads // tp),
            kv_heads=kv_heads_per_rank(spec, tp),
            head_dim=spec.head_dim,
            vocab=spec.vocab,
            qk_norm=spec.qk_norm,
            act_bytes=4 if scheme.name == "fp32" else 2,
            kv_bytes=kv_element_bytes,
        )

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token in one layer."""
        return 2 * self.kv_heads * self.head_dim * self.kv_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_bytes_per_token_layer

    @property
    def groups(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return max(1, self.heads // self.kv_heads)
