"""Settings precedence: flag > environment CAPPLAN_* > --config file > default."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from capplan.errors import InputError
from capplan.settings import ServerSettings
from reference_server.config import limits_in_force, resolve_config

ALLOC = "PYTORCH_CUDA_ALLOC_CONF"


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    file = tmp_path / "server.json"
    file.write_text(
        json.dumps({"max_concurrent": 3, "queue_size": 9, "queue_timeout_s": 4.5,
                    "source": "capplan estimate", "rate_limit": "5/minute"})
    )  # fmt: skip
    env = {"CAPPLAN_QUEUE_SIZE": "11", "CAPPLAN_QUEUE_TIMEOUT_S": "6"}
    config = resolve_config({"queue_timeout_s": 7.0, "port": None}, env, file)
    assert config.max_concurrent == 3  # file
    assert config.queue_size == 11  # env over file
    assert config.queue_timeout_s == 7.0  # flag over env
    assert config.rate_limit == "5/minute"
    assert config.request_timeout_s == ServerSettings().request_timeout_s  # default
    assert config.port == 8000  # a flag left unset does not count
    assert config.host == "127.0.0.1"  # never all interfaces unless told
    assert config.sources["queue_size"] == "env"
    assert config.sources["queue_timeout_s"] == "flag"


def test_env_file_from_estimate_emit_is_read(tmp_path: Path) -> None:
    file = tmp_path / "server.env"
    file.write_text(
        "# written by capplan estimate --emit env\n"
        "CAPPLAN_MAX_CONCURRENT=6\nCAPPLAN_VRAM_GUARD=0.85\nCAPPLAN_RATE_LIMIT='10/minute;100/hour'\n"
        "CAPPLAN_MAX_CONTEXT=none\nCAPPLAN_UNKNOWN_KEY=1\n"
    )
    config = resolve_config({}, {}, file)
    assert config.max_concurrent == 6
    assert config.vram_guard == 0.85
    assert config.rate_limit == "10/minute;100/hour"
    assert config.max_context is None


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"max_concurrent": 0}, {}, "max_concurrent"),
        ({}, {"CAPPLAN_QUEUE_SIZE": "lots"}, "CAPPLAN_QUEUE_SIZE"),
        ({"vram_guard": 1.5}, {}, "vram_guard"),
        ({"backend": "vllm"}, {}, "backend"),
        ({"rate_limit": "often"}, {}, "rate limit"),
        ({"strict": "maybe"}, {}, "strict"),
        ({"header_timeout_s": 0}, {}, "header_timeout_s"),
        ({"max_prompt_chars": 0}, {}, "max_prompt_chars"),
        ({"max_connections": 10**9}, {}, "ulimit -n"),  # more than the open-file limit allows
        ({"engine": "vllm"}, {}, "engine"),
        ({"kv_cache_memory": 0}, {}, "kv_cache_memory"),
        ({}, {"CAPPLAN_GPU_MEMORY_UTILIZATION": "1.5"}, "gpu_memory_utilization"),
        ({"prefill_chunk_tokens": 0}, {}, "prefill_chunk_tokens"),
    ],
)
def test_bad_settings_are_input_errors(flags: dict, env: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        resolve_config(flags, env)


def test_missing_or_broken_config_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        resolve_config({}, {}, tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        resolve_config({}, {}, broken)


def test_gunicorn_limits_say_which_are_per_worker_and_which_shared() -> None:
    scopes = {
        limit.name: limit.scope
        for limit in limits_in_force(
            resolve_config({"server": "gunicorn", "workers": 2, "rate_limit": "5/minute"})
        )
    }
    assert scopes["max_concurrent"] == "per worker (2 workers: 8 in all)"
    assert scopes["queue_size"] == "per worker (2 workers: 32 in all)"
    assert scopes["rate_limit"].startswith("per client, per worker")  # memory:// is per process
    assert scopes["request_timeout_s"] == "per request"
    shared = resolve_config(
        {"server": "gunicorn", "workers": 2, "rate_limit": "5/minute",
         "rate_limit_storage": "redis://127.0.0.1:6379"}
    )  # fmt: skip
    assert {lim.name: lim.scope for lim in limits_in_force(shared)}["rate_limit"] == (
        "per client, shared by all workers (redis://127.0.0.1:6379)"
    )


def test_limits_say_where_the_vram_guard_does_not_apply() -> None:
    def guard_scope(**flags: object) -> str:
        limits = limits_in_force(resolve_config(flags))
        return next(lim.scope for lim in limits if lim.name == "vram_guard")

    assert guard_scope(backend="emulated") == "not applied (emulated: no GPU)"
    assert guard_scope(device="cpu") == "not applied (cpu)"
    assert guard_scope() == "on cuda only"


def test_unknown_rate_limit_storage_is_refused_at_start() -> None:
    with pytest.raises(InputError, match="rate limit storage"):
        resolve_config({"rate_limit": "5/minute", "rate_limit_storage": "carrier-pigeon://x"})


@pytest.mark.parametrize("fmt", ["json", "env", "gunicorn"])
def test_files_written_by_estimate_emit_configure_the_server(tmp_path: Path, fmt: str) -> None:
    from capplan.settings import write

    settings = ServerSettings(
        max_concurrent=5, queue_size=12, queue_timeout_s=20, request_timeout_s=90,
        max_tokens_cap=512, max_context=4096, rate_limit="10/minute;100/hour",
        vram_guard=0.9, max_batch=5, batch_wait_ms=4, workers=2, threads=1,
        drain_timeout_s=25,
    )  # fmt: skip
    path = tmp_path / ("gunicorn.conf.py" if fmt == "gunicorn" else f"server.{fmt}")
    write(settings.emitted(), fmt, path, "capplan estimate --gpu x --model y")
    config = resolve_config({}, {}, path)
    for key, value in settings.emitted().items():
        assert getattr(config, key) == value, key
        assert config.sources[key] == f"file:{path}", key


def test_serve_sets_expandable_segments_before_the_backend_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reference_server import launch

    seen: list[str | None] = []
    monkeypatch.setattr(launch, "run_uvicorn", lambda *a: seen.append(os.environ.get(ALLOC)))
    monkeypatch.delenv(ALLOC, raising=False)
    launch.serve(resolve_config({"backend": "emulated"}), print)
    monkeypatch.setenv(ALLOC, "backend:cudaMallocAsync")
    launch.serve(resolve_config({"backend": "emulated"}), print)
    assert seen == ["expandable_segments:True", "backend:cudaMallocAsync"]


def test_quoted_environment_values_from_gunicorn_raw_env_are_unquoted() -> None:
    config = resolve_config({}, {"CAPPLAN_RATE_LIMIT": '"10/minute;100/hour"'})
    assert config.rate_limit == "10/minute;100/hour"
