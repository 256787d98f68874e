"""Quantization schemes and the bytes each really stores.

A scheme is never a plain ratio: only Linear weights inside the decoder layers are converted;
embeddings, lm_head, norms and biases stay 16-bit, and every quantized tensor carries scales
(and zeros) whose size depends on rows or groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from capplan.errors import InputError
from capplan.estimate.architecture import LINEAR, ModelSpec, TensorGroup, tensor_groups

NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize for weights
DOUBLE_QUANT_BLOCK = 256  # second-level blocks of absmax values
BNB_NESTED_CODE_BYTES = 256 * 4  # dynamic-map code of the nested state, fp32 x 256 per tensor
PER_CHANNEL = -1  # GPTQ/AWQ group_size -1: one scale and zero per output row


@dataclass(frozen=True)
class QuantScheme:
    """How weights are stored, and what it costs at decode time."""

    name: str
    label: str
    rule: str
    weight_bits: int
    group_size: int | None = None
    double_quant: bool = False
    # Measured-in-the-wild kernel overheads relative to a 16-bit bandwidth-bound decode step;
    # printed as assumptions.
    decode_slowdown: float = 1.0
    prefill_slowdown: float = 1.0

    @property
    def quantizes_linears(self) -> bool:
        return self.name in {"int8", "nf4", "fp4", "gptq", "awq", "fp8"}

    @property
    def unquantized_bytes(self) -> int:
        """Bytes per element of everything the scheme leaves alone."""
        return 4 if self.name == "fp32" else 2


SCHEME_NAMES = ("fp32", "fp16", "bf16", "fp8", "int8", "nf4", "fp4", "gptq", "awq")

_ALIASES = {
    "float32": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "bnb-int8": "int8",
    "8bit": "int8",
    "llm.int8": "int8",
    "bnb-nf4": "nf4",
    "4bit": "nf4",
    "bnb-fp4": "fp4",
    "gptq-int4": "gptq",
    "awq-int4": "awq",
    "fp8-e4m3": "fp8",
}


def scheme_names() -> list[str]:
    return [*SCHEME_NAMES, "native"]


def parse_quant(
    text: str,
    *,
    native_dtype: str = "bf16",
    group_size: int = 128,
    double_quant: bool = True,
    bits: int = 4,
) -> QuantScheme:
    """A scheme from its name (`int8`, `nf4`, `awq`, ... or `native`). `group_size` -1 is
    GPTQ/AWQ per-channel (one group spans the whole input); `bits` applies to GPTQ/AWQ."""
    key = text.strip().lower()
    key = _ALIASES.get(key, key)
    if key == "native":
        key = native_dtype
    if key not in SCHEME_NAMES:
        raise InputError(
            f"unknown quantization '{text}'; choose one of {', '.join(scheme_names())}"
        )
    if group_size != PER_CHANNEL and (group_size <= 0 or group_size & (group_size - 1)):
        raise InputError(
            f"--group-size must be a power of two (32, 64, 128) or -1, got {group_size}"
        )
    if key in {"gptq", "awq"}:
        if bits not in (2, 3, 4, 8):
            raise InputError(f"{key} with {bits} bits is not modelled; pass --quant (2/3/4/8 bit)")
        return _grouped(key, group_size, bits)
    return _SCHEMES[key](group_size, double_quant)


def _dense(name: str, bits: int) -> QuantScheme:
    return QuantScheme(name, name, f"every tensor in {name}", bits)


def _bnb_4bit(name: str, double_quant: bool) -> QuantScheme:
    """bitsandbytes nf4 / fp4: the same storage, only the 4-bit code differs."""
    absmax = "8-bit, with fp32 per 256 blocks" if double_quant else "fp32"
    return QuantScheme(
        name,
        f"bitsandbytes {name}" + (" + double quant" if double_quant else ""),
        f"Linear weights 4-bit + absmax per 64 values ({absmax}); embeddings, lm_head, norms, "
        "biases 16-bit",
        4,
        group_size=NF4_BLOCK,
        double_quant=double_quant,
        decode_slowdown=1.5,
        prefill_slowdown=1.3,
    )


def _grouped(name: str, group_size: int, bits: int = 4) -> QuantScheme:
    """GPTQ / AWQ: packed weights with a scale and zero per group; GPTQ adds g_idx."""
    g_idx = " + int32 g_idx per input" if name == "gptq" else ""
    group = "per channel" if group_size == PER_CHANNEL else f"g{group_size}"
    span = "all" if group_size == PER_CHANNEL else str(group_size)
    return QuantScheme(
        name,
        f"{name.upper()} int{bits} {group}",
        f"Linear weights {bits}-bit packed in int32 + fp16 scale and {bits}-bit zero per {span} "
        f"inputs per output{g_idx}; embeddings, lm_head, norms 16-bit",
        bits,
        group_size=group_size,
        decode_slowdown=1.2,
        prefill_slowdown=1.2,
    )


_SCHEMES = {
    "fp32": lambda g, dq: _dense("fp32", 32),
    "fp16": lambda g, dq: _dense("fp16", 16),
    "bf16": lambda g, dq: _dense("bf16", 16),
    "fp8": lambda g, dq: QuantScheme(
        "fp8",
        "fp8 (e4m3, per-tensor scale)",
        "Linear weights 1 byte + one fp32 scale per tensor; embeddings, lm_head, norms 16-bit",
        8,
    ),
    "int8": lambda g, dq: QuantScheme(
        "int8",
        "bitsandbytes int8 (LLM.int8)",
        "Linear weights int8 + one fp32 scale per output row; embeddings, lm_head, norms, "
        "biases stay 16-bit",
        8,
        decode_slowdown=4.0,
        prefill_slowdown=1.5,
    ),
    "nf4": lambda g, dq: _bnb_4bit("nf4", dq),
    "fp4": lambda g, dq: _bnb_4bit("fp4", dq),
    "gptq": lambda g, dq: _grouped("gptq", g),
    "awq": lambda g, dq: _grouped("awq", g),
}


@dataclass(frozen=True)
class WeightStorage:
    """Bytes the weights occupy, split into what the scheme converted and what it left."""

    scheme: str
    total_bytes: int
    quantized_params: int
    quantized_data_bytes: int
    scale_bytes: int
    unquantized_params: int
    unquantized_bytes: int
    naive_bytes: int  # params x weight bits / 8: the estimate that ignores all of the above

    @property
    def params(self) -> int:
        return self.quantized_params + self.unquantized_params


def _linear_bytes(group: TensorGroup, scheme: QuantScheme) -> tuple[int, int]:
    """(data bytes, scale/zero bytes) for one Linear group under a quantizing scheme."""
    out_f, in_f, count = group.out_features, group.in_features, group.count
    numel = out_f * in_f
    if scheme.name == "int8":
        data, scales = numel, out_f * 4  # CB int8 + SCB fp32 per row
    elif scheme.name == "fp8":
        data, scales = numel, 4
    elif scheme.name in {"nf4", "fp4"}:
        blocks = math.ceil(numel / NF4_BLOCK)
        data = math.ceil(numel / 2)
        if scheme.double_quant:
            nested = math.ceil(blocks / DOUBLE_QUANT_BLOCK)
            scales = blocks + nested * 4 + 4 + BNB_NESTED_CODE_BYTES  # uint8 absmax + fp32 + offset
        else:
            scales = blocks * 4
    else:  # gptq / awq, group along the input dimension
        size = in_f if scheme.group_size == PER_CHANNEL else scheme.group_size or 128
        groups = math.ceil(in_f / size)
        bits = scheme.weight_bits
        data = math.ceil(numel * bits / 32) * 4  # packed into int32
        zeros = math.ceil(groups * out_f * bits / 32) * 4  # qzeros, packed the same way
        scales = groups * out_f * 2 + zeros  # fp16 scales + packed zeros
        if scheme.name == "gptq":
            scales += in_f * 4  # g_idx
    return data * count, scales * count


def weight_storage(spec: ModelSpec, scheme: QuantScheme, *, tp: int = 1) -> WeightStorage:
    """Weight bytes of `spec` under `scheme` (per rank when split `tp` ways)."""
    q_params = q_data = scales = u_params = 0
    for group in tensor_groups(spec):
        if scheme.quantizes_linears and group.role == LINEAR:
            data, extra = _linear_bytes(group, scheme)
            q_params += group.numel
            q_data += data
            scales += extra
        else:
            u_params += group.numel
    u_bytes = u_params * scheme.unquantized_bytes
    total = q_data + scales + u_bytes
    naive = (q_params + u_params) * scheme.weight_bits // 8
    return WeightStorage(
        scheme=scheme.name,
        total_bytes=math.ceil(total / tp),
        quantized_params=q_params,
        quantized_data_bytes=math.ceil(q_data / tp),
        scale_bytes=math.ceil(scales / tp),
        unquantized_params=u_params,
        unquantized_bytes=math.ceil(u_bytes / tp),
        naive_bytes=math.ceil(naive / tp),
    )
