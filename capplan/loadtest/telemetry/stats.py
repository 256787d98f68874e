"""The capplan reference server's `GET /stats` JSON, reduced to `stats_*` columns.

Keys are looked up by their dotted path after flattening nested objects, accepting a few
spellings, so a field moving into a sub-object does not blank the column.
"""

from __future__ import annotations

from typing import Any

_MIB = 1024 * 1024

# column -> (accepted dotted-path suffixes, scale applied to the value)
_FIELDS: dict[str, tuple[tuple[str, ...], float]] = {
    "stats_running": (("running", "in_flight", "active"), 1.0),
    "stats_queued": (("queued", "waiting", "queue_depth", "queue_len"), 1.0),
    "stats_gpu_memory_used_mib": (
        ("memory.used_bytes", "memory.allocated_bytes", "memory_used_bytes", "used_bytes"),
        1.0 / _MIB,
    ),
    "stats_gpu_memory_total_mib": (
        ("memory.total_bytes", "memory_total_bytes", "total_bytes"),
        1.0 / _MIB,
    ),
    "stats_kv_cache_used_mib": (("kv_used_bytes", "kv_cache_used_bytes"), 1.0 / _MIB),
}

STATS_COLUMNS: tuple[str, ...] = (*_FIELDS, "stats_memory_kind", "stats_emulated")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists are left as values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def _lookup(flat: dict[str, Any], suffixes: tuple[str, ...]) -> float | None:
    for suffix in suffixes:
        for path in sorted(flat, key=len):  # the shallowest match is the server-wide figure
            if path == suffix or path.endswith("." + suffix):
                value = flat[path]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                return float(value)
    return None


def parse_stats(data: Any) -> dict[str, object]:
    """Decoded /stats JSON -> the `stats_*` columns found in it."""
    flat = flatten(data)
    row: dict[str, object] = {}
    for column, (suffixes, scale) in _FIELDS.items():
        value = _lookup(flat, suffixes)
        if value is not None:
            row[column] = round(value * scale, 3) if scale != 1.0 else value
    kind = flat.get("memory.kind")
    if isinstance(kind, str):
        # "torch_cuda", "emulated_kv", or "process_rss" (a CPU backend: not GPU memory at all)
        row["stats_memory_kind"] = kind
        used = row.get("stats_gpu_memory_used_mib")
        if kind == "emulated_kv" and used is not None:
            row.setdefault("stats_kv_cache_used_mib", used)  # all it accounts for is KV
    emulated = [v for k, v in flat.items() if k == "emulated" or k.endswith(".emulated")]
    if emulated:
        row["stats_emulated"] = bool(emulated[0])
    return row
