"""The server's own view of a run, from its Prometheus /metrics read before and after: a check.

vLLM and the capplan reference server keep TTFT, E2E and queue-time histograms and token
counters. Their increase over the run, set beside the client's figures for the same requests,
shows what the network, HTTP and the client add (a few ms) and catches a client that counts
wrongly (tokens that disagree) or a server shared with other traffic (counts that disagree).
Means only: a histogram's buckets are too coarse for honest percentiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from capplan.loadtest.record import RequestRecord
from capplan.loadtest.telemetry.prometheus_scrape import sample_values

# figure -> accepted metric names (first present wins, so a server exporting both families is
# not counted twice); histograms give `<name>_sum` and `<name>_count`.
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "ttft": ("vllm:time_to_first_token_seconds", "capplan:time_to_first_token_seconds"),
    "e2e": ("vllm:e2e_request_latency_seconds", "capplan:e2e_request_latency_seconds"),
    "queue": ("vllm:request_queue_time_seconds", "capplan:request_queue_time_seconds"),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "output_tokens": ("vllm:generation_tokens_total", "capplan:generation_tokens_total"),
    "prompt_tokens": ("vllm:prompt_tokens_total", "capplan:prompt_tokens_total"),
}


def parse_counters(text: str) -> dict[str, float]:
    """A /metrics page -> {`ttft_sum`, `ttft_count`, ..., `output_tokens`, ...} found in it."""
    values = {name: sum(samples) for name, samples in sample_values(text).items()}
    out: dict[str, float] = {}
    for figure, names in HISTOGRAMS.items():
        for name in names:
            if f"{name}_count" in values:
                out[f"{figure}_sum"] = values.get(f"{name}_sum", 0.0)
                out[f"{figure}_count"] = values[f"{name}_count"]
                break
    for figure, names in COUNTERS.items():
        for name in names:
            if name in values:
                out[figure] = values[name]
                break
    return out


def scrape(origin: str, *, timeout_s: float = 2.0) -> dict[str, float] | None:
    """The counters at `origin`/metrics now; None when the target has no readable /metrics."""
    import httpx

    try:
        response = httpx.get(origin.rstrip("/") + "/metrics", timeout=timeout_s, trust_env=False)
        if response.status_code != 200:
            return None
        counters = parse_counters(response.text)
    except (httpx.HTTPError, ValueError):
        return None
    return counters or None


def _delta_mean_ms(before: Mapping[str, float], after: Mapping[str, float], fig: str) -> Any:
    count = after.get(f"{fig}_count", 0.0) - before.get(f"{fig}_count", 0.0)
    if f"{fig}_count" not in after or count <= 0:
        return None
    total = after.get(f"{fig}_sum", 0.0) - before.get(f"{fig}_sum", 0.0)
    return round(total / count * 1000.0, 3)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def server_view(
    before: Mapping[str, float] | None,
    after: Mapping[str, float] | None,
    records: Iterable[RequestRecord],
) -> dict[str, Any] | None:
    """summary.json's `server_view`: the server's means beside the client's, or None."""
    if not before or not after:
        return None
    ok = [r for r in records if r.ok]  # warmup included: the server saw those too
    streamed = [r for r in ok if r.first_token is not None]

    def counted(fig: str) -> int | None:
        if f"{fig}_count" not in after:
            return None
        return round(after[f"{fig}_count"] - before.get(f"{fig}_count", 0.0))

    def increase(fig: str) -> int | None:
        return round(after[fig] - before.get(fig, 0.0)) if fig in after else None

    server = {
        "requests": counted("e2e"),
        "ttft_mean_ms": _delta_mean_ms(before, after, "ttft"),
        "e2e_mean_ms": _delta_mean_ms(before, after, "e2e"),
        "queue_mean_ms": _delta_mean_ms(before, after, "queue"),
        "output_tokens": increase("output_tokens"),
        "prompt_tokens": increase("prompt_tokens"),
    }
    client = {
        "requests": len(ok),
        "ttft_mean_ms": _mean(
            [(r.first_token - r.send) * 1000.0 for r in streamed if r.first_token]
        ),
        "e2e_mean_ms": _mean([(r.end - r.send) * 1000.0 for r in ok]),
        "output_tokens": sum(r.output_tokens for r in ok),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
    }
    gap: dict[str, float | None] = {}
    for key in ("ttft_mean_ms", "e2e_mean_ms"):
        s, c = server[key], client[key]
        gap[key] = round(c - s, 3) if isinstance(s, float) and isinstance(c, float) else None
    notes = []
    if server["requests"] is not None and server["requests"] != client["requests"]:
        notes.append(
            f"the server finished {server['requests']} requests, the client {client['requests']} "
            "ok: other traffic on the server, or failures it counts differently; compare with care"
        )
    if server["output_tokens"] is not None and server["output_tokens"] != client["output_tokens"]:
        notes.append(
            f"output tokens differ: server {server['output_tokens']}, client "
            f"{client['output_tokens']} (see tokens.output_source)"
        )
    return {
        "source": "target /metrics, read before the first request and after the last",
        "server": server,
        "client": client,
        "client_minus_server_ms": gap,
        "notes": notes,
        "before": dict(before),
        "after": dict(after),
    }


def attach_server_view(
    summary: dict[str, Any],
    before: Mapping[str, float] | None,
    after: Mapping[str, float] | None,
    records: list[RequestRecord],
) -> None:
    """`server_view` in the summary: the server's own means beside the client's."""
    view = server_view(before, after, records)
    if view is not None:
        summary["server_view"] = view
