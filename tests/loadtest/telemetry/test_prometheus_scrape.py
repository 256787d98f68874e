from __future__ import annotations

import pytest

from capplan.loadtest.telemetry.prometheus_scrape import parse_metrics
from capplan.loadtest.telemetry.stats import parse_stats

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 7.0
vllm:num_requests_running{engine="1",model_name="qwen"} 5.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="qwen"} 0.625
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="qwen"} 1234.0
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="qwen"} 2.0
"""


def test_vllm_gauges_summed_and_kv_usage_is_the_fullest_engine() -> None:
    row = parse_metrics(VLLM_METRICS)
    assert row == {
        "metrics_running": 12.0,
        "metrics_waiting": 3.0,
        "metrics_kv_cache_usage": 0.625,
        "metrics_generation_tokens_total": 1234.0,
        "metrics_preemptions_total": 2.0,
        "metrics_flavor": "vllm",
    }


def test_old_vllm_cache_usage_name_is_understood() -> None:
    text = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.5\n"
    assert parse_metrics(text)["metrics_kv_cache_usage"] == 0.5


def test_capplan_names_and_vllm_names_are_not_double_counted() -> None:
    text = (
        "capplan:num_requests_running 4\n"
        "vllm:num_requests_running 4\n"
        "capplan:num_requests_waiting 9\n"
        "capplan:gpu_memory_used_bytes 1073741824\n"
    )
    row = parse_metrics(text)
    assert row["metrics_running"] == 4.0
    assert row["metrics_waiting"] == 9.0
    assert row["metrics_gpu_memory_used_bytes"] == 1073741824.0
    assert row["metrics_flavor"] == "capplan+vllm"


def test_tgi_queue_names_are_understood() -> None:
    row = parse_metrics("tgi_queue_size 6\ntgi_batch_current_size 16\n")
    assert (row["metrics_waiting"], row["metrics_running"]) == (6.0, 16.0)
    assert row["metrics_flavor"] == "tgi"


def test_page_without_known_names_gives_no_columns() -> None:
    assert parse_metrics("process_cpu_seconds_total 3.5\n") == {}


def test_malformed_page_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_metrics("this is { not prometheus\n")


def test_stats_json_nested_memory_and_queue() -> None:
    row = parse_stats(
        {
            "running": 3,
            "queued": 5,
            "limits": {"max_concurrent": 8, "queue_size": 64},
            "memory": {"used_bytes": 3 * 2**30, "total_bytes": 10 * 2**30},
            "backend": {"emulated": True},
        }
    )
    assert row == {
        "stats_running": 3.0,
        "stats_queued": 5.0,
        "stats_gpu_memory_used_mib": 3072.0,
        "stats_gpu_memory_total_mib": 10240.0,
        "stats_emulated": True,
    }
