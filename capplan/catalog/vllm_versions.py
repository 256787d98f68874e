"""vLLM release lines and how each sizes its KV cache, from `vllm.toml` beside this module."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from capplan.catalog.loader import GIB, read_toml
from capplan.errors import InputError

# 0.10.1.1, 0.8.5.post1, v0.31.0; three or four numeric parts.
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?(?:\.?post\d+|rc\d+)?$")
_FIELDS = (
    "gpu_memory_utilization",
    "sampler",
    "non_torch_gib",
    "non_torch_scope",
    "cudagraph_gib",
    "large_gpu",
    "small_max_num_seqs",
    "whole_page_concurrency",
    "v2_model_types",
    "v2_quantized",
    "v2_cudagraph_gib",
)


@dataclass(frozen=True)
class SamplerPath:
    """Bytes the profile's dummy sampler run holds per logit element (or a fixed peak)."""

    name: str
    bytes_per_element: int
    sm_buffer: bool
    fixed_bytes: int
    basis: str
    source: str


@dataclass(frozen=True)
class SchedulerDefaults:
    """vLLM's OpenAI-server scheduler defaults shared by every release line."""

    large_max_num_batched_tokens: int
    small_max_num_batched_tokens: int
    large_max_num_seqs: int
    block_size: int
    source: str


@dataclass(frozen=True)
class VllmVersion:
    """What one vLLM release sizes its KV cache with; `sources` names each field's basis."""

    version: str  # as given, or the newest line when defaulted
    line: str  # the release line it falls in, e.g. "0.9.1-0.16.x"
    is_default: bool
    gpu_memory_utilization: float
    sampler: str  # the V1 runner's sampler path (SamplerPath.name)
    non_torch_bytes: int
    non_torch_scope: str
    cudagraph_bytes: int  # V1 runner; 0 when not subtracted
    large_gpu: str  # name | memory | memory-not-a100
    small_max_num_seqs: int
    whole_page_concurrency: bool
    v2_model_types: tuple[str, ...]  # model_types on Model Runner V2 by default; "*" = all dense
    v2_quantized: bool
    v2_cudagraph_bytes: int
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.version} (default: newest known)" if self.is_default else self.version


def _parse(version: str) -> tuple[int, ...] | None:
    match = _VERSION.match(version.strip())
    return tuple(int(p) for p in match.groups() if p is not None) if match else None


@cache
def _data() -> dict[str, Any]:
    return read_toml("vllm.toml")


def known_range() -> str:
    """The releases capplan knows, e.g. '0.8.0 to 0.33.x'."""
    data = _data()
    return f"{data['change'][0]['from']} to {data['newest']}.x"


def scheduler_defaults() -> SchedulerDefaults:
    return SchedulerDefaults(**_data()["defaults"])


def sampler_path(name: str) -> SamplerPath:
    row = dict(_data()["sampler"][name])
    fixed = int(row.pop("fixed_gib", 0) * GIB)
    return SamplerPath(name=name, fixed_bytes=fixed, **row)


def vllm_version(version: str | None) -> VllmVersion:
    """The release line `version` falls in (None: the newest), or a one-line `InputError`."""
    data = _data()
    newest = tuple(int(p) for p in data["newest"].split("."))
    wanted = (*newest, 99) if version is None else _parse(version)
    if wanted is None:
        raise InputError(
            f"malformed --vllm-version '{version}'; give a release such as 0.10.1.1 "
            f"(capplan knows vLLM {known_range()})"
        )
    first = _parse(data["change"][0]["from"])
    if wanted[:2] > newest or (first is not None and wanted < first):
        raise InputError(
            f"unknown --vllm-version '{version}'; capplan knows vLLM {known_range()} "
            "(the V1 engine)"
        )
    return _fold(data["change"], wanted, version)


def _fold(changes: list[dict[str, Any]], wanted: tuple[int, ...], given: str | None) -> VllmVersion:
    """Apply every change up to `wanted`; each field keeps the source of its last change."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    start, end = changes[0]["from"], None
    for change in changes:
        at = _parse(change["from"])
        if at is not None and at > wanted:
            end = change["from"]
            break
        start = change["from"]
        for key in _FIELDS:
            if key in change:
                values[key] = change[key]
                sources[key] = f"{change['basis']}: {change['source']}"
    last = _before(end) if end else f"{_data()['newest']}.x"
    line = start if last == start else f"{start}-{last}"
    return VllmVersion(
        version=given.strip() if given else f"{_data()['newest']}.x",
        line=line,
        is_default=given is None,
        gpu_memory_utilization=values["gpu_memory_utilization"],
        sampler=values["sampler"],
        non_torch_bytes=int(values["non_torch_gib"] * GIB),
        non_torch_scope=values["non_torch_scope"],
        cudagraph_bytes=int(values["cudagraph_gib"] * GIB),
        large_gpu=values["large_gpu"],
        small_max_num_seqs=values["small_max_num_seqs"],
        whole_page_concurrency=values["whole_page_concurrency"],
        v2_model_types=tuple(values["v2_model_types"]),
        v2_quantized=values["v2_quantized"],
        v2_cudagraph_bytes=int(values["v2_cudagraph_gib"] * GIB),
        sources=sources,
    )


def _before(version: str) -> str:
    """The release line that ends just before `version`: 0.9.1 -> 0.9.0, 0.17.0 -> 0.16.x."""
    parts = [int(p) for p in version.split(".")]
    if parts[2] > 0:
        return f"{parts[0]}.{parts[1]}.{parts[2] - 1}"
    return f"{parts[0]}.{parts[1] - 1}.x"
