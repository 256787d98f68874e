"""Decoder architecture -> the real tensor inventory, and from it the parameter count.

Shapes follow the transformers implementations: q/k/v/o use the config's head_dim (which may
differ from hidden / heads), gated MLP (gate, up, down), RMSNorm weights, biases only where the
family has them, embeddings, and an lm_head only when the embeddings are not tied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Roles decide what a quantization scheme converts: only "linear" weights are quantized by
# bitsandbytes / GPTQ / AWQ / fp8; the rest stay in 16-bit.
LINEAR = "linear"
BIAS = "bias"
NORM = "norm"
EMBEDDING = "embedding"
LM_HEAD = "lm_head"


@dataclass(frozen=True)
class TensorGroup:
    """`count` tensors of one shape (one per layer, usually) with one role."""

    name: str
    role: str
    out_features: int
    in_features: int
    count: int

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features * self.count


@dataclass(frozen=True)
class ModelSpec:
    """Everything the estimator needs to know about one decoder-only model."""

    id: str
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    max_positions: int
    dtype: str = "bf16"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2
    # Per layer: the sliding window, or None for full attention.
    layer_windows: tuple[int | None, ...] = ()
    hf_id: str | None = None
    published_params: int | None = None
    source: str = ""
    check: tuple[str, ...] = field(default=())

    def window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else None

    @property
    def has_sliding_window(self) -> bool:
        return any(w is not None for w in self.layer_windows)


@dataclass(frozen=True)
class FamilyRules:
    """What a model_type adds to the common decoder layer."""

    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2


# Families transformers implements with these exact parameter sets.
FAMILY_RULES: dict[str, FamilyRules] = {
    "llama": FamilyRules(),
    "mistral": FamilyRules(),
    "qwen2": FamilyRules(qkv_bias=True),
    "qwen3": FamilyRules(qk_norm=True),
    "gemma2": FamilyRules(norms_per_layer=4),
    "phi3": FamilyRules(),
}


def tensor_groups(spec: ModelSpec) -> list[TensorGroup]:
    """The model's tensors grouped by shape and role."""
    h, n = spec.hidden, spec.layers
    q_out = spec.heads * spec.head_dim
    kv_out = spec.kv_heads * spec.head_dim
    groups = [
        TensorGroup("embed_tokens", EMBEDDING, spec.vocab, h, 1),
        TensorGroup("q_proj", LINEAR, q_out, h, n),
        TensorGroup("k_proj", LINEAR, kv_out, h, n),
        TensorGroup("v_proj", LINEAR, kv_out, h, n),
        TensorGroup("o_proj", LINEAR, h, q_out, n),
        TensorGroup("gate_proj", LINEAR, spec.intermediate, h, n),
        TensorGroup("up_proj", LINEAR, spec.intermediate, h, n),
        TensorGroup("down_proj", LINEAR, h, spec.intermediate, n),
        TensorGroup("layer_norms", NORM, h, 1, n * spec.norms_per_layer),
        TensorGroup("final_norm", NORM, h, 1, 1),
    ]
    if spec.qkv_bias:
        groups += [
            TensorGroup("q_bias", BIAS, q_out, 1, n),
            TensorGroup("kv_bias", BIAS, kv_out, 1, 2 * n),
        ]
    if spec.o_bias:
        groups.append(TensorGroup("o_bias", BIAS, h, 1, n))
    if spec.mlp_bias:
        groups += [
            TensorGroup("gate_up_bias", BIAS, spec.intermediate, 1, 2 * n),
            TensorGroup("down_bias", BIAS, h, 1, n),
        ]
    if spec.qk_norm:
        groups.append(TensorGroup("qk_norm", NORM, spec.head_dim, 1, 2 * n))
    if not spec.tied_embeddings:
        groups.append(TensorGroup("lm_head", LM_HEAD, spec.vocab, h, 1))
    return groups


def parameter_count(spec: ModelSpec) -> int:
    """Total parameters, counting tied embeddings once (as `sum(p.numel())` does)."""
    return sum(group.numel for group in tensor_groups(spec))


def parameters_by_role(spec: ModelSpec) -> dict[str, int]:
    counts: dict[str, int] = {}
    for group in tensor_groups(spec):
        counts[group.role] = counts.get(group.role, 0) + group.numel
    return counts


def layer_windows(layers: int, window: int | None, pattern: str | None) -> tuple[int | None, ...]:
    """Per-layer windows: "all" layers, or "alternate" (0, 2, 4, ... as transformers' Gemma-2)."""
    if window is None or pattern is None:
        return (None,) * layers
    if pattern == "all":
        return (window,) * layers
    if pattern == "alternate":
        return tuple(window if i % 2 == 0 else None for i in range(layers))
    raise ValueError(f"unknown sliding_layers pattern {pattern!r}")
