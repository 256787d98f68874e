"""The server-side gauges worth plotting against the load, from a Prometheus /metrics page.

Servers name the same quantity differently; each column lists the names it accepts, first match
wins, so a server exporting both vLLM's and capplan's names is not counted twice. Samples of one
name with several label sets (one per model or engine) are summed, or for usage fractions the
largest is taken.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricColumn:
    column: str
    names: tuple[str, ...]
    combine: Callable[[list[float]], float] = sum


METRIC_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn(
        "metrics_running",
        ("vllm:num_requests_running", "capplan:num_requests_running", "tgi_batch_current_size"),
    ),
    MetricColumn(
        "metrics_waiting",
        ("vllm:num_requests_waiting", "capplan:num_requests_waiting", "tgi_queue_size"),
    ),
    MetricColumn(
        "metrics_kv_cache_usage",  # fraction 0..1, whatever the "perc" in the names says
        (
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "vllm:gpu_cache_usage_percent",
            "capplan:kv_cache_usage_perc",
            "capplan:gpu_cache_usage_perc",
        ),
        max,
    ),
    MetricColumn(
        "metrics_gpu_memory_used_bytes",
        (
            "capplan:gpu_memory_used_bytes",
            "capplan:gpu_memory_allocated_bytes",
            "capplan:memory_used_bytes",
        ),
    ),
    MetricColumn(
        "metrics_gpu_memory_total_bytes",
        ("capplan:gpu_memory_total_bytes", "capplan:memory_total_bytes"),
    ),
    MetricColumn(
        "metrics_prompt_tokens_total",
        ("vllm:prompt_tokens_total", "capplan:prompt_tokens_total"),
    ),
    MetricColumn(
        "metrics_generation_tokens_total",
        ("vllm:generation_tokens_total", "capplan:generation_tokens_total"),
    ),
    MetricColumn("metrics_rejections_total", ("capplan:request_rejections_total",)),
    MetricColumn(
        "metrics_preemptions_total",
        ("vllm:num_preemptions_total", "capplan:num_preemptions_total"),
    ),
)

METRICS_COLUMNS: tuple[str, ...] = (*(c.column for c in METRIC_COLUMNS), "metrics_flavor")


def sample_values(text: str) -> dict[str, list[float]]:
    """Prometheus exposition text -> every sample's value by sample name (one per label set).

    Malformed text raises ValueError (from prometheus_client's parser).
    """
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, list[float]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name].append(float(sample.value))
    return values


def parse_metrics(text: str) -> dict[str, object]:
    """Prometheus exposition text -> the `metrics_*` columns found in it.

    `metrics_flavor` names the exporter family the values came from (`vllm`, `capplan`, `tgi`).
    Malformed text raises ValueError (from prometheus_client's parser).
    """
    values = sample_values(text)
    row: dict[str, object] = {}
    flavors: set[str] = set()
    for spec in METRIC_COLUMNS:
        for name in spec.names:
            if name in values:
                row[spec.column] = spec.combine(values[name])
                flavors.add(name.split(":")[0] if ":" in name else name.split("_")[0])
                break
    if flavors:
        row["metrics_flavor"] = "+".join(sorted(flavors))
    return row
