"""Health, readiness, models, stats, metrics and docs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import httpx

from capplan.settings import ServerSettings
from reference_server.app import create_app
from reference_server.backend import Finished, GenerationEvent, GenerationRequest, TokenDelta
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.metrics import ServerMetrics
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
    app = create_app(ServerSettings(backend="emulated"), backend)
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
    assert stats["process"]["workers"] == 1 and stats["process"]["pid"] > 0


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
        "capplan:time_per_output_token_seconds_count",
        "capplan:request_inference_time_seconds_count",
    ):
        assert name in text, name
    # Histograms are in seconds, like vLLM's: buckets from 5 ms, and a 0 ms answer under 5 s.
    bucket = 'capplan:e2e_request_latency_seconds_bucket{{le="{}",model_name="emulated"}}'
    assert bucket.format("0.005") in text
    assert bucket.format("5.0") + " 1.0" in text


class _HeldBackTextBackend(EmulatedBackend):
    """Sends 2 tokens of text, then finishes having generated 5: a stop string held the rest
    back, as the transformers backend's TextStream does."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        yield TokenDelta(text=" a b", n_tokens=2)
        yield Finished("stop", prompt_tokens=len(request.prompt_ids), completion_tokens=5)


def test_generation_tokens_count_tokens_a_stop_string_held_back(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(backend=_HeldBackTextBackend())
    answer = httpx.post(server.url + "/v1/completions", json=completion(8), timeout=10).json()
    assert answer["usage"]["completion_tokens"] == 5
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'capplan:generation_tokens_total{model_name="emulated"} 5.0' in text


def test_cpu_memory_is_not_published_as_gpu_memory() -> None:
    metrics = ServerMetrics("m")
    metrics.set_memory({"kind": "process_rss", "used_bytes": 10, "total_bytes": 100})
    assert b"capplan:gpu_memory_used_bytes{" not in metrics.render()
    metrics.set_memory({"kind": "torch_cuda", "used_bytes": 10, "total_bytes": 100})
    assert b'capplan:gpu_memory_used_bytes{model_name="m"} 10.0' in metrics.render()


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
    # pydantic's `#/$defs/...` refs resolve nowhere inside an operation: /docs and schema
    # fuzzers (schemathesis) would skip those parts.
    assert "#/$defs/" not in httpx.get(server.url + "/openapi.json", timeout=10).text
