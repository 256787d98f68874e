"""Per-client rate limits (429 + Retry-After) and the bearer API key (who a client is:
test_hostile_clients.py)."""

from __future__ import annotations

import httpx
import pytest

from capplan.errors import InputError
from reference_server.rate_limit import client_key, parse_rate_limit
from tests.reference_server.conftest import ServerFactory, completion


def test_past_the_rate_limit_answers_429_with_retry_after(emulated_server: ServerFactory) -> None:
    server = emulated_server(rate_limit="3/minute;100/hour")
    codes = [
        httpx.post(server.url + "/v1/completions", json=completion(), timeout=10).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 200]
    refused = httpx.post(server.url + "/v1/completions", json=completion(), timeout=10)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    assert server.stats()["counters"]["rate_limited"] == 1


def test_bad_rate_limit_spec_is_an_input_error() -> None:
    with pytest.raises(InputError, match="10/minute"):
        parse_rate_limit("ten per minute")


def test_client_key_never_holds_the_key_in_clear() -> None:
    assert "secret" not in client_key("secret", "10.0.0.1")
    assert client_key(None, "10.0.0.1") == "ip:10.0.0.1"


def test_api_key_is_required_on_the_api_but_not_on_health(
    emulated_server: ServerFactory,
) -> None:
    server = emulated_server(api_key="s3cret")
    url = server.url + "/v1/completions"
    missing = httpx.post(url, json=completion(), timeout=10)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, json=completion(), headers={"authorization": "Bearer x"}, timeout=10)
    assert wrong.status_code == 401
    right = httpx.post(
        url, json=completion(), headers={"authorization": "Bearer s3cret"}, timeout=10
    )
    assert right.status_code == 200
    assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_unreachable_rate_limit_store_lets_requests_through_and_counts_it(
    emulated_server: ServerFactory,
) -> None:
    pytest.importorskip("coredis", reason="limits[async-redis] (coredis) not installed")
    from capplan.loadtest.child_process import free_port

    dead = f"redis://127.0.0.1:{free_port()}"  # nobody listens there: refused at once
    server = emulated_server(rate_limit="1/minute", rate_limit_storage=dead)
    codes = [
        httpx.post(server.url + "/v1/completions", json=completion(), timeout=10).status_code
        for _ in range(2)
    ]
    assert codes == [200, 200]  # the gate still guards the backend; the store's outage is no 500
    assert server.stats()["rate_limit_storage_errors"] == 2
