from __future__ import annotations

from pathlib import Path

import pytest

from capplan.errors import InputError
from capplan.loadtest.run import load_scenario
from capplan.loadtest.scenario import SCENARIO_DIR, build_config

SHIPPED = ("chat-short", "rag-long-prompt", "seed-rtx3080", "ci-smoke")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_scenario_loads_with_a_target(name: str) -> None:
    config = load_scenario(name, {"url": "http://127.0.0.1:9"})
    assert config.name == name
    assert config.steps
    assert config.requests or config.duration_s


def test_flags_override_every_scenario_field(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'url = "http://a:1"\nconcurrency = [1, 2]\nrequests = 10\nmax_tokens = 64\n'
        "seed = 3\n[slo]\nttft_ms = 500\n"
    )
    config = load_scenario(
        path,
        {
            "url": "http://b:2",
            "concurrency": "1,4,16",
            "max_tokens": "uniform:8:32",
            "seed": 9,
            "slo": {"ttft_ms": 200, "e2e_ms": None},
            "duration": "2m",
        },
    )
    assert config.url == "http://b:2"
    assert [s.label for s in config.steps] == ["concurrency=1", "concurrency=4", "concurrency=16"]
    assert config.max_tokens.kind == "uniform"
    assert (config.max_tokens.low, config.max_tokens.high) == (8, 32)
    assert config.seed == 9
    assert config.slo.ttft_ms == 200
    assert config.duration_s == 120
    assert config.requests == 10


def test_rate_flag_replaces_the_scenarios_closed_loop() -> None:
    config = load_scenario("chat-short", {"url": "http://a:1", "rate": "2,4"})
    assert config.open_loop
    assert [s.label for s in config.steps] == ["rate=2", "rate=4"]


def test_ramp_needs_a_duration_and_gives_one_step() -> None:
    values = {"url": "http://a:1", "requests": 5, "ramp": "1:20"}
    with pytest.raises(InputError, match="duration"):
        build_config(values)
    config = build_config({**values, "duration": 10})
    assert [s.label for s in config.steps] == ["ramp=1-20"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"endpoint": "embeddings"}, "endpoint"),
        ({"arrival": "uniform", "rate": 1}, "arrival"),
        ({"concurrency": "0"}, "concurrency"),
        ({"prompt_tokens": "gauss:3"}, "prompt_tokens"),
        ({"duration": "ten"}, "duration"),
        ({"url": None, "launch": None, "requests": 1}, "target"),
    ],
)
def test_bad_values_raise_one_line_input_errors(overrides: dict, message: str) -> None:
    values = {"url": "http://a:1", "requests": 5}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "url" in overrides:
        values.pop("url")
    with pytest.raises(InputError, match=message) as info:
        build_config(values)
    assert "\n" not in str(info.value)


def test_unknown_scenario_names_the_shipped_ones() -> None:
    with pytest.raises(InputError, match="chat-short"):
        load_scenario("chat-shrot", {})


def test_unknown_scenario_key_is_refused() -> None:
    with pytest.raises(InputError, match="concurency"):
        build_config({"url": "http://a:1", "requests": 1, "concurency": 4})


def test_config_dict_records_seed_target_and_hides_the_api_key() -> None:
    config = build_config({"url": "http://a:1", "requests": 1, "api_key": "secret", "seed": 7})
    data = config.to_dict()
    assert data["seed"] == 7 and data["url"] == "http://a:1"
    assert "secret" not in str(data)


def test_shipped_scenarios_live_in_the_repository() -> None:
    assert {p.stem for p in SCENARIO_DIR.glob("*.toml")} >= set(SHIPPED)


def test_backoff_is_on_by_default_and_the_old_retry_after_key_still_reads() -> None:
    base = {"url": "http://a:1", "requests": 1}
    assert (build_config(base).backoff, build_config(base).max_retries) == (True, 2)
    assert build_config({**base, "honor_retry_after": False}).backoff is False
    assert build_config({**base, "backoff": "off", "max_retries": 0}).max_retries == 0
    with pytest.raises(InputError, match="min_requests must be at least 0"):
        build_config({**base, "min_requests": -1})
