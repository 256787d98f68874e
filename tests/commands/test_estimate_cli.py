"""`capplan estimate` and `capplan catalog` through the real CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capplan.cli import app

SEED = [
    "estimate",
    "--gpu",
    "rtx3080",
    "--model",
    "qwen3-8b-int8",
    "--prompt-tokens",
    "512",
    "--max-tokens",
    "512",
]
SETTINGS_KEYS = {
    "max_concurrent",
    "queue_size",
    "queue_timeout_s",
    "request_timeout_s",
    "max_tokens_cap",
    "max_context",
    "rate_limit",
    "vram_guard",
    "max_batch",
    "batch_wait_ms",
    "workers",
    "threads",
    "drain_timeout_s",
}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "120"})


def test_seed_table_shows_every_memory_term_and_the_verdict() -> None:
    result = invoke(*SEED)
    assert result.exit_code == 0, result.output
    for term in (
        "weights",
        "CUDA context",
        "prefill activations",
        "allocator reserve",
        "safety margin",
        "KV per token",
        "KV per request",
        "free",
        "Fits: 1 concurrent request",
        "3 with none",
        "max_concurrent",
    ):
        assert term in result.output


def test_defaults_are_stated_in_the_output() -> None:
    result = invoke("estimate", "--gpu", "rtx3080", "--model", "qwen3-8b-int8")
    assert "prompt 512 (default)" in result.output
    assert "max_tokens 512 (default)" in result.output


def test_json_output_carries_the_schema_version() -> None:
    result = invoke(*SEED, "--format", "json")
    data = json.loads(result.output)
    assert data["schema_version"] == "1.0"
    assert data["memory"]["kv_per_token_bytes"] == 147456
    assert set(data["settings"]) == SETTINGS_KEYS


def test_markdown_output_is_a_document() -> None:
    result = invoke(*SEED, "--format", "markdown", "--runtime", "vllm", "--max-model-len", "1024")
    assert result.output.startswith("# capplan estimate")
    assert "| GPU KV cache size |" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--gpu", "rtx308", "--model", "qwen3-8b"],
            "error: unknown GPU 'rtx308'; did you mean rtx3080",
        ),
        (
            ["--gpu", "rtx3080", "--model", "qwen3-8x-int8"],
            "error: unknown model 'qwen3-8x'; did you mean qwen3-8b",
        ),
        (
            ["--model", "qwen3-8b", "--vram", "lots", "--bandwidth", "936GB/s"],
            "error: --vram 'lots' is not a size",
        ),
        (
            ["--gpu", "rtx3080", "--model", "qwen3-8b", "--format", "yaml"],
            "error: unknown --format 'yaml'",
        ),
        (
            ["--gpu", "rtx3080", "--model", "qwen3-8b", "--quant", "int3"],
            "error: unknown quantization 'int3'",
        ),
        (
            ["--gpu", "rtx3080", "--model", "qwen3-8b-int9"],
            "error: unknown quantization 'int9' in 'qwen3-8b-int9'; use one of:",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = invoke("estimate", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)
    assert "Traceback" not in result.output


def test_bad_input_through_the_console_entry_point_has_no_traceback() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from capplan.cli import main; main()",
            "estimate",
            "--gpu",
            "rtx308",
            "--model",
            "qwen3-8b",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: unknown GPU 'rtx308'; did you mean rtx3080 or rtx3090 or rtx4090?"
    )


def test_emit_json_writes_the_server_settings_contract(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    result = invoke(*SEED, "--emit", "json", str(target))
    assert result.exit_code == 0
    data = json.loads(target.read_text())
    assert set(data) == SETTINGS_KEYS | {"source"}
    assert data["max_concurrent"] == 1 and data["max_tokens_cap"] == 512


def test_emit_env_writes_capplan_variables(tmp_path: Path) -> None:
    target = tmp_path / "capplan.env"
    assert invoke(*SEED, "--emit", "env", str(target)).exit_code == 0
    lines = [x for x in target.read_text().splitlines() if not x.startswith("#")]
    keys = {line.split("=", 1)[0] for line in lines}
    assert keys == {"CAPPLAN_" + k.upper() for k in SETTINGS_KEYS}


def test_emit_gunicorn_writes_a_config_with_raw_env(tmp_path: Path) -> None:
    target = tmp_path / "gunicorn.conf.py"
    assert invoke(*SEED, "--emit", "gunicorn", str(target)).exit_code == 0
    namespace: dict = {}
    exec(compile(ast.parse(target.read_text()), str(target), "exec"), namespace)
    assert namespace["workers"] == 1 and namespace["threads"] == 2
    assert namespace["timeout"] > 0
    assert "CAPPLAN_MAX_CONCURRENT=1" in namespace["raw_env"]


def test_emit_refuses_when_nothing_fits(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    result = invoke(
        "estimate", "--gpu", "rtx3080", "--model", "qwen3-32b", "--emit", "json", str(target)
    )
    assert result.exit_code == 2
    assert "Does not fit" in result.output
    assert not target.exists()


def test_estimate_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from capplan.cli import app\n"
        "try:\n"
        "    app(['estimate', '--gpu', 'rtx3080', '--model', 'qwen3-8b-int8'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'torch', 'transformers', 'pandas', 'httpx', 'fastapi'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_catalog_lists_gpus_and_models_with_sources() -> None:
    gpus = invoke("catalog", "gpus")
    assert gpus.exit_code == 0 and "rtx3080" in gpus.output and "(check)" in gpus.output
    models = invoke("catalog", "models", "--format", "json")
    rows = json.loads(models.output)
    assert {r["id"] for r in rows} >= {"qwen3-8b", "llama-3.1-8b", "gemma-2-9b"}
    assert all(r["source"] for r in rows)
