"""The server's own /metrics beside the client's figures for the same run."""

from __future__ import annotations

from pathlib import Path

from capplan.loadtest.httpx.run import run_load
from capplan.loadtest.run import load_scenario
from capplan.loadtest.server_view import parse_counters

from .conftest import ServerFactory

VLLM_PAGE = """\
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 0.2
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_count{model_name="m"} 4.0
vllm:e2e_request_latency_seconds_sum{model_name="m"} 2.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="m"} 40.0
"""


def test_vllm_histograms_and_counters_are_read() -> None:
    counters = parse_counters(VLLM_PAGE)
    assert counters == {
        "ttft_sum": 0.2,
        "ttft_count": 4.0,
        "e2e_sum": 2.0,
        "e2e_count": 4.0,
        "output_tokens": 40.0,
    }


def test_the_run_summary_sets_the_servers_own_means_beside_the_clients(
    emulated_server: ServerFactory, tmp_path: Path
) -> None:
    with emulated_server(ttft_ms=20, tpot_ms=2) as url:
        # Traffic before the run must not count: only the increase over the run does.
        config = load_scenario(None, {"url": url, "requests": 2, "max_tokens": 3})
        run_load(config, out_dir=tmp_path / "before", handle_signals=False, reports=False)
        config = load_scenario(None, {"url": url, "requests": 4, "concurrency": "2",
                                      "max_tokens": 6})  # fmt: skip
        result = run_load(config, out_dir=tmp_path / "run", handle_signals=False, reports=False)
    view = result.summary["server_view"]
    assert view["server"]["requests"] == view["client"]["requests"] == 4
    assert view["server"]["output_tokens"] == view["client"]["output_tokens"] == 24
    assert view["server"]["ttft_mean_ms"] >= 19.0
    # The client's clock starts before the server's and stops after it.
    assert view["client_minus_server_ms"]["ttft_mean_ms"] > -1.0
    assert view["client_minus_server_ms"]["e2e_mean_ms"] > -1.0
    assert view["notes"] == []
