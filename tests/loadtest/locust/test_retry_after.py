"""The Locust engine waits out a Retry-After like the httpx engine (the default backoff)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capplan.loadtest.launch import launched_server
from capplan.loadtest.locust.engine import run_locust
from capplan.loadtest.scenario import build_config

pytestmark = pytest.mark.slow


def test_a_refused_locust_user_waits_until_the_step_ends(tmp_path: Path) -> None:
    # One request a minute is allowed: after its 429 (Retry-After about 60 s) each user waits
    # out the rest of the one-second step instead of resending at once.
    args = ["--backend", "emulated", "--ttft-ms", "1", "--rate-limit", "1/minute"]
    with launched_server(args, log_path=tmp_path / "server.log", ready_timeout_s=60.0) as url:
        config = build_config(
            {},
            dict(url=url, concurrency="2", duration="1s", prompt_tokens=8, max_tokens=2,
                 model_name="m"),
        )  # fmt: skip
        result = run_locust(config, out_dir=tmp_path / "run", reports=False)
    by_status = result.summary["requests"]["by_status"]
    # Each of the two users is refused at most once; resending at once would be hundreds.
    assert set(by_status) == {"200", "429"}
    assert by_status["200"] == 1 and by_status["429"] in (1, 2)
    assert result.summary["load_model_run"]["engine"] == "locust"
    assert "Retry-After" in result.summary["load_model_run"]["how"]
