"""Health, readiness, models, stats, metrics and docs."""

from __future__ import annotations

import asyncio
import threading

import httpx

from reference_server.app import create_app
from reference_server.config import ServerConfig
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.testing import serve_in_thread
from tests.reference_server.conftest import ServerFactory, completion


class _SlowStartBackend(EmulatedBackend):
    """Its start() waits for the test to say the model is loaded."""

    def __init__(self) -> None:
        super().__init__(EmulatedTiming(ttft_ms=0, tpot_ms=0))
        self.loaded = threading.Event()

    async def start(self) -> None:
        await asyncio.to_thread(self.loaded.wait, 20)
        await super().start()


def test_ready_is_503_until_the_backend_started() -> None:
    backend = _SlowStartBackend()
    app = create_app(ServerConfig(backend="emulated"), backend)
    with serve_in_thread(app, wait_ready=False) as url:
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        loading = httpx.get(url + "/ready", timeout=10)
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading"
        early = httpx.post(url + "/v1/completions", json=completion(), timeout=10)
        assert early.status_code == 503
        assert "retry-after" in early.headers
        backend.loaded.set()
        deadline = 100
        while httpx.get(url + "/ready", timeout=10).status_code != 200 and deadline:
            deadline -= 1
            threading.Event().wait(0.02)
        assert httpx.get(url + "/ready", timeout=10).json() == {"status": "ready"}
        assert httpx.post(url + "/v1/completions", json=completion(), timeout=10).is_success


def test_models_stats_and_emulated_label(emulated_server: ServerFactory) -> None:
    server = emulated_server(max_concurrent=3, queue_size=7, max_context=4096)
    models = httpx.get(server.url + "/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == "emulated"
    assert models["data"][0]["max_model_len"] == 4096
    answer = httpx.post(server.url + "/v1/completions", json=completion(), timeout=10)
    assert answer.headers["x-capplan-emulated"] == "true"
    stats = server.stats()
    assert stats["emulated"] is True
    assert stats["limits"]["max_concurrent"] == 3
    assert stats["limits"]["queue_size"] == 7
    assert stats["counters"] == {"ok": 1}
    assert stats["memory"]["kind"] == "emulated_kv"


def test_metrics_use_vllm_names_with_capplan_prefix(emulated_server: ServerFactory) -> None:
    server = emulated_server(rate_limit="1/minute")
    httpx.post(server.url + "/v1/completions", json=completion(3), timeout=10)
    httpx.post(server.url + "/v1/completions", json=completion(3), timeout=10)  # 429
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for name in (
        "capplan:num_requests_running",
        "capplan:num_requests_waiting",
        "capplan:time_to_first_token_seconds_bucket",
        "capplan:e2e_request_latency_seconds_count",
        "capplan:request_queue_time_seconds_sum",
        "capplan:prompt_tokens_total",
        'capplan:generation_tokens_total{model_name="emulated"} 3.0',
        'capplan:request_rejections_total{model_name="emulated",reason="rate_limited"} 1.0',
        "capplan:gpu_memory_used_bytes",
    ):
        assert name in text, name


def test_two_apps_in_one_process_keep_separate_metrics(emulated_server: ServerFactory) -> None:
    one, two = emulated_server(), emulated_server()
    httpx.post(one.url + "/v1/completions", json=completion(5), timeout=10)
    line = 'capplan:generation_tokens_total{model_name="emulated"} 5.0'
    assert line in httpx.get(one.url + "/metrics", timeout=10).text
    assert line not in httpx.get(two.url + "/metrics", timeout=10).text


def test_docs_and_openapi_describe_the_request_bodies(emulated_server: ServerFactory) -> None:
    server = emulated_server()
    assert httpx.get(server.url + "/docs", timeout=10).status_code == 200
    schema = httpx.get(server.url + "/openapi.json", timeout=10).json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert "messages" in body["content"]["application/json"]["schema"]["properties"]
