"""Prometheus metrics, named like vLLM's with a `capplan:` prefix.

Each app gets its own CollectorRegistry (several apps in one process, as in tests, never
collide). Under gunicorn, set PROMETHEUS_MULTIPROC_DIR before the workers import
prometheus_client (reference_server/gunicorn_conf.py does) and /metrics aggregates every worker.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0,
)  # fmt: skip
# vLLM's time_per_output_token_seconds buckets.
_TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        r = self.registry
        labels = ["model_name"]
        self.running = Gauge(
            "capplan:num_requests_running", "Requests holding a slot (generating).", labels,
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.waiting = Gauge(
            "capplan:num_requests_waiting", "Requests waiting in the admission queue.", labels,
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.ttft = Histogram(
            "capplan:time_to_first_token_seconds", "Time from arrival to the first token.",
            labels, registry=r, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.e2e = Histogram(
            "capplan:e2e_request_latency_seconds", "Time from arrival to the last token.",
            labels, registry=r, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.tpot = Histogram(
            "capplan:time_per_output_token_seconds",
            "Mean time per output token after the first, per finished request.", labels,
            registry=r, buckets=_TPOT_BUCKETS,
        )  # fmt: skip
        self.inference_time = Histogram(
            "capplan:request_inference_time_seconds",
            "Time from admission (a slot) to the last token.", labels,
            registry=r, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.queue_time = Histogram(
            "capplan:request_queue_time_seconds", "Time spent waiting for a slot.",
            labels, registry=r, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "capplan:prompt_tokens", "Prompt tokens of admitted requests.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "capplan:generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.request_prompt_tokens = Histogram(
            "capplan:request_prompt_tokens", "Prompt tokens per request.", labels,
            registry=r, buckets=_TOKEN_BUCKETS,
        )  # fmt: skip
        self.request_generation_tokens = Histogram(
            "capplan:request_generation_tokens", "Generated tokens per request.", labels,
            registry=r, buckets=_TOKEN_BUCKETS,
        )  # fmt: skip
        self.success = Counter(
            "capplan:request_success", "Requests finished, by finish reason.",
            [*labels, "finished_reason"], registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "capplan:request_rejections", "Requests refused or cut short, by reason.",
            [*labels, "reason"], registry=r,
        )  # fmt: skip
        self.gpu_memory_used = Gauge(
            "capplan:gpu_memory_used_bytes", "Accelerator memory in use (KV when emulated).",
            labels, registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.gpu_memory_total = Gauge(
            "capplan:gpu_memory_total_bytes", "Accelerator memory in total.", labels,
            registry=r, multiprocess_mode="max",
        )  # fmt: skip

        self.kv_cache_usage = Gauge(
            "capplan:kv_cache_usage_perc",
            "Fraction of the KV pool's blocks held by running requests (1 = full).", labels,
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.cache_config = Gauge(
            "capplan:cache_config_info", "The KV pool: block size and blocks, as labels.",
            [*labels, "block_size", "num_gpu_blocks"], registry=r, multiprocess_mode="max",
        )  # fmt: skip

    def set_queue(self, running: int, waiting: int) -> None:
        self.running.labels(self.model_name).set(running)
        self.waiting.labels(self.model_name).set(waiting)

    def reject(self, reason: str) -> None:
        self.rejections.labels(self.model_name, reason).inc()

    def set_memory(self, stats: dict[str, Any]) -> None:
        kv = stats.get("kv_cache")
        if isinstance(kv, dict):
            self.kv_cache_usage.labels(self.model_name).set(kv["usage"])
            self.cache_config.labels(
                self.model_name, str(kv["block_size"]), str(kv["num_blocks"])
            ).set(1)
        # On cpu the backend reports the process's RSS: that is no GPU memory, so the GPU gauges
        # stay empty rather than look like a card filling up (/stats still shows the RSS).
        if stats.get("kind") == "process_rss":
            return
        used, total = stats.get("used_bytes"), stats.get("total_bytes")
        if isinstance(used, (int, float)):
            self.gpu_memory_used.labels(self.model_name).set(used)
        if isinstance(total, (int, float)):
            self.gpu_memory_total.labels(self.model_name).set(total)

    def render(self) -> bytes:
        """The exposition text: this app's registry, or every worker's under multiprocess."""
        path = multiprocess_dir()
        if path:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=path)
            return generate_latest(registry)
        return generate_latest(self.registry)
