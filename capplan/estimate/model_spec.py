"""Which model: a catalog id with an optional quantization suffix, an HF id from the catalog,
or a local `config.json` / model directory (read offline with json, nothing imported)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capplan import embedded_model
from capplan.catalog import loader
from capplan.errors import InputError
from capplan.estimate.architecture import FAMILY_RULES, FamilyRules, ModelSpec, layer_windows
from capplan.estimate.quantization import SCHEME_NAMES, QuantScheme, parse_quant

# Suffixes accepted after a catalog id: `qwen3-8b-int8`, `llama-3.1-8b-awq`.
_SUFFIXES = (*SCHEME_NAMES, "bnb-int8", "bnb-nf4", "8bit", "4bit", "gptq-int4", "awq-int4")

# transformers' per-family default for tie_word_embeddings when config.json leaves it out.
_TIED_DEFAULT = {"gemma2": True, "gemma": True}


EMBEDDED_SOURCE = "the reference server's embedded tiny model (capplan/embedded_model.py)"


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec with the quantization it will run in and where that came from."""

    spec: ModelSpec
    quant: QuantScheme
    quant_source: str  # "suffix", "--quant", "config.json", "native dtype"


def spec_from_entry(entry: loader.ModelEntry) -> ModelSpec:
    rules = FAMILY_RULES.get(entry.model_type, FamilyRules())
    return ModelSpec(
        id=entry.id,
        model_type=entry.model_type,
        layers=entry.layers,
        hidden=entry.hidden,
        intermediate=entry.intermediate,
        heads=entry.heads,
        kv_heads=entry.kv_heads,
        head_dim=entry.head_dim or entry.hidden // entry.heads,
        vocab=entry.vocab,
        tied_embeddings=entry.tied_embeddings,
        max_positions=entry.max_positions,
        dtype=entry.dtype,
        qkv_bias=rules.qkv_bias,
        o_bias=rules.o_bias,
        qk_norm=rules.qk_norm,
        norms_per_layer=rules.norms_per_layer,
        layer_windows=layer_windows(entry.layers, entry.sliding_window, entry.sliding_layers),
        hf_id=entry.hf_id,
        published_params=entry.params,
        source=entry.source,
        check=entry.check,
    )


def _dtype_name(value: Any) -> str:
    text = str(value or "bfloat16").replace("torch.", "")
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(text, "bf16")


def _windows_from_config(cfg: dict[str, Any], layers: int, model_type: str) -> tuple:
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        return tuple(window if t == "sliding_attention" else None for t in types)
    if model_type in {"qwen2", "qwen3"}:
        if not cfg.get("use_sliding_window") or window is None:
            return (None,) * layers
        first = int(cfg.get("max_window_layers", layers))
        return tuple(window if i >= first else None for i in range(layers))
    if model_type == "gemma2":
        return layer_windows(layers, window, "alternate")
    return layer_windows(layers, window, "all" if window else None)


def spec_from_config(cfg: dict[str, Any], model_id: str, source: str) -> ModelSpec:
    """A spec from the fields of an HF config.json (nested text_config is followed)."""
    if "num_hidden_layers" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "quantization_config": cfg.get("quantization_config")}
    try:
        model_type = str(cfg.get("model_type", "llama"))
        layers = int(cfg["num_hidden_layers"])
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        rules = FAMILY_RULES.get(model_type, FamilyRules())
        attention_bias = bool(cfg.get("attention_bias", False))
        return ModelSpec(
            id=model_id,
            model_type=model_type,
            layers=layers,
            hidden=hidden,
            intermediate=int(cfg["intermediate_size"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab=int(cfg["vocab_size"]),
            tied_embeddings=bool(
                cfg.get("tie_word_embeddings", _TIED_DEFAULT.get(model_type, False))
            ),
            max_positions=int(cfg.get("max_position_embeddings", 4096)),
            dtype=_dtype_name(cfg.get("torch_dtype", cfg.get("dtype"))),
            qkv_bias=rules.qkv_bias or attention_bias,
            # attention_bias puts a bias on o_proj too, except in Qwen2 (q/k/v only).
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=rules.qk_norm,
            norms_per_layer=rules.norms_per_layer,
            layer_windows=_windows_from_config(cfg, layers, model_type),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source} is not a decoder config.json (missing or bad {exc})") from None


@dataclass(frozen=True)
class ConfigQuant:
    """What a config.json `quantization_config` says about weight storage."""

    scheme: str
    group_size: int = 128
    bits: int = 4
    double_quant: bool = False


def _compressed_tensors(qc: dict[str, Any]) -> ConfigQuant:
    """llm-compressor's `compressed-tensors`: fp8 weights, or int4 packed with group scales."""
    groups = qc.get("config_groups") or {}
    weights = next(
        (g.get("weights") for g in groups.values() if isinstance(g, dict) and g.get("weights")),
        None,
    )
    if not isinstance(weights, dict):
        raise InputError("compressed-tensors config without weight settings; pass --quant")
    bits, kind = int(weights.get("num_bits") or 0), str(weights.get("type", "int"))
    if kind == "float" and bits == 8:
        return ConfigQuant("fp8")
    if kind == "int" and bits in (4, 8):
        size = weights.get("group_size")
        return ConfigQuant("gptq", int(size) if size else -1, bits)
    raise InputError(f"compressed-tensors {kind}{bits} weights are not modelled; pass --quant")


def _quant_from_config(cfg: dict[str, Any]) -> ConfigQuant | None:
    """The quantization config.json declares. An unknown method is an error, not silently
    the native dtype: the weights would be mis-sized."""
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method", "")).lower()
    if not method and ("load_in_8bit" in qc or "load_in_4bit" in qc):
        method = "bitsandbytes"  # configs written before quant_method existed
    if method == "bitsandbytes":
        if qc.get("load_in_8bit"):
            return ConfigQuant("int8")
        if not qc.get("load_in_4bit"):
            return None
        # BitsAndBytesConfig's defaults: fp4 codes, no double quantization.
        return ConfigQuant(
            str(qc.get("bnb_4bit_quant_type") or "fp4"),
            double_quant=bool(qc.get("bnb_4bit_use_double_quant", False)),
        )
    if method in {"gptq", "awq"}:
        size = qc.get("group_size", qc.get("q_group_size", 128))
        bits = qc.get("bits") or qc.get("w_bit") or 4
        try:
            return ConfigQuant(method, int(128 if size is None else size), int(bits))
        except (TypeError, ValueError):
            message = f"config.json {method} group_size/bits unreadable; pass --quant"
            raise InputError(message) from None
    if method == "fp8":
        return ConfigQuant("fp8")
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    raise InputError(
        f"config.json quant_method '{method}' is not modelled; pass --quant "
        f"({', '.join(SCHEME_NAMES)})"
    )


def read_config(path: Path) -> tuple[dict[str, Any], str]:
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{path} has no config.json; point --model at a model directory or file")
    try:
        return json.loads(file.read_text(encoding="utf-8")), str(file)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {file} as JSON ({exc})") from None


def _looks_like_path(text: str) -> bool:
    return text.endswith(".json") or text.startswith((".", "/", "~")) or Path(text).exists()


def resolve_model(
    text: str,
    *,
    quant: str | None = None,
    group_size: int | None = None,
    double_quant: bool | None = None,
) -> ResolvedModel:
    """The model and quantization `--model` (and `--quant`) name. `double_quant` None: what
    config.json says, else on (bitsandbytes 4-bit)."""
    text = text.strip()
    if group_size is not None and group_size != -1 and group_size < 1:
        raise InputError(
            f"--group-size must be a power of two (32, 64, 128) or -1, got {group_size}"
        )
    if text.lower() in embedded_model.ALIASES:
        spec = spec_from_config(
            embedded_model.config_json(), embedded_model.MODEL_ID, EMBEDDED_SOURCE
        )
        return ResolvedModel(
            spec,
            _parse(quant or "native", spec, group_size or 128, True),
            "native dtype" if not quant else "--quant",
        )
    path = Path(text).expanduser()
    if _looks_like_path(text) and path.exists():
        cfg, source = read_config(path)
        spec = spec_from_config(cfg, path.name if path.is_dir() else path.parent.name, source)
        if quant:
            try:
                declared = _quant_from_config(cfg)
            except InputError:
                declared = None  # --quant replaces a method capplan does not model
            size = group_size or (declared.group_size if declared else 128)
            dq = True if double_quant is None else double_quant
            return ResolvedModel(spec, _parse(quant, spec, size, dq), "--quant")
        declared = _quant_from_config(cfg)
        if declared is None:
            return ResolvedModel(spec, _parse("native", spec, 128, True), "native dtype")
        scheme = parse_quant(
            declared.scheme,
            native_dtype=spec.dtype,
            group_size=group_size or declared.group_size,
            double_quant=declared.double_quant if double_quant is None else double_quant,
            bits=declared.bits,
        )
        return ResolvedModel(spec, scheme, "config.json")
    if _looks_like_path(text) or (text.count("/") > 1):
        raise InputError(f"no such model file or directory: {text}")
    entry, suffix = _catalog_entry(text)
    spec = spec_from_entry(entry)
    size = group_size or 128
    dq = True if double_quant is None else double_quant
    if quant:
        return ResolvedModel(spec, _parse(quant, spec, size, dq), "--quant")
    if suffix:
        return ResolvedModel(spec, _parse(suffix, spec, size, dq), "suffix")
    return ResolvedModel(spec, _parse("native", spec, size, dq), "native dtype")


def _parse(name: str, spec: ModelSpec, group_size: int, double_quant: bool) -> QuantScheme:
    return parse_quant(
        name, native_dtype=spec.dtype, group_size=group_size, double_quant=double_quant
    )


def _catalog_entry(text: str) -> tuple[loader.ModelEntry, str | None]:
    table = loader.models()
    key = text.lower()
    if key in table:
        return table[key], None
    by_hf = {entry.hf_id.lower(): entry for entry in table.values()}
    if key in by_hf:
        return by_hf[key], None
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        base = key.removesuffix("-" + suffix)
        if base != key:
            if base in table:
                return table[base], suffix
            return loader.model(base), suffix  # raises with the closest ids
    for base in sorted(table, key=len, reverse=True):
        if key.startswith(base + "-"):
            unknown = key.removeprefix(base + "-")
            known = ", ".join(SCHEME_NAMES)
            raise InputError(f"unknown quantization '{unknown}' in '{text}'; use one of: {known}")
    return loader.model(key), None
