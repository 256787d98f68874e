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
from capplan.estimate.result import SCHEMA_VERSION

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
H100_VLLM = ["--gpu", "h100", "--model", "qwen3-8b", "--runtime", "vllm"]
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
    "kv_cache_memory",
    "prefill_chunk_tokens",
}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "120"})


def test_seed_table_shows_every_memory_term_and_the_verdict() -> None:
    result = invoke(*SEED)
    assert result.exit_code == 0, result.output
    for term in (
        "weights",
        "CUDA context",
        "activations at the peak",
        "allocated peak",
        "allocator cache",
        "device peak",
        "safety margin",
        "KV per token",
        "KV per request",
        "free",
        "Fits: 1 concurrent request",
        "out-of-memory past 3",
        "max_concurrent",
        "uncalibrated",
    ):
        assert term in result.output


def test_defaults_are_stated_in_the_output() -> None:
    result = invoke("estimate", "--gpu", "rtx3080", "--model", "qwen3-8b-int8")
    assert "prompt 512 (default)" in result.output
    assert "max_tokens 512 (default)" in result.output


def test_json_output_carries_the_schema_version() -> None:
    result = invoke(*SEED, "--format", "json")
    data = json.loads(result.output)
    assert data["schema_version"] == SCHEMA_VERSION == "1.3"
    assert data["memory"]["kv_per_token_bytes"] == 147456
    assert set(data["settings"]) == SETTINGS_KEYS


def test_markdown_output_is_a_document() -> None:
    result = invoke(*SEED, "--format", "markdown", "--runtime", "vllm", "--max-model-len", "1024")
    assert result.output.startswith("# capplan estimate")
    assert "| GPU KV cache size: |" in result.output


def test_vllm_output_names_the_release_and_the_basis_of_every_term() -> None:
    table = invoke("estimate", *H100_VLLM, "--vllm-version", "0.9.2")
    assert table.exit_code == 0, table.output
    for term in ("vLLM 0.9.2, release line 0.9.1-0.16.x", "dummy sampler run", "CUDA-graph"):
        assert term in table.output
    default = json.loads(invoke("estimate", *H100_VLLM, "--format", "json").output)["vllm"]
    assert default["version"] == "0.33.x" and default["version_is_default"]
    assert default["gpu_memory_utilization"] == 0.92
    assert set(default["basis"]) >= {"sampler", "forward", "non_torch", "cudagraph"}
    old = json.loads(
        invoke("estimate", *H100_VLLM, "--vllm-version", "0.9.2", "--format", "json").output
    )["vllm"]
    assert old["gpu_memory_utilization"] == 0.9 and old["cudagraph_bytes"] == 0
    given = invoke("estimate", *H100_VLLM, "--gpu-memory-utilization", "0.8", "--format", "json")
    assert json.loads(given.output)["vllm"]["gpu_memory_utilization"] == 0.8


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
        (["--vram", "0", "--bandwidth", "900", "--model", "qwen3-8b"], "error: --vram '0' is too"),
        (["--vram", "-5GiB", "--bandwidth", "900", "--model", "qwen3-8b"], "error: --vram '-5GiB'"),
        (["--vram", "24GiB", "--bandwidth", "0", "--model", "qwen3-8b"], "error: --bandwidth '0'"),
        (["--gpu", "rtx3090", "--model", "qwen3-8b", "--tflops", "-1"], "error: --tflops '-1'"),
        (["--gpu", "rtx3090", "--model", "qwen3-8b", "--gpus", "0"], "error: --gpus and --tp"),
        (
            ["--gpu", "rtx3090", "--model", "qwen3-8b", "--gpus", "2", "--tp", "4"],
            "error: --gpus 2",
        ),
        (
            ["--gpu", "rtx3090", "--model", "qwen2.5-7b", "--gpus", "7", "--tp", "7"],
            "error: qwen2.5",
        ),
        (["--gpu", "rtx3090", "--model", "qwen3-8b", "--kv-dtype", "int4"], "error: unknown --kv"),
        (["--gpu", "rtx3090", "--model", "qwen3-8b", "--max-tokens", "-3"], "error: --prompt-tok"),
        (
            ["--gpu", "rtx3090", "--model", "qwen3-8b", "--prompt-tokens", "40500"],
            "error: --prompt-tokens + --max-tokens = 41012 exceeds qwen3-8b's 40960 positions",
        ),
        (["--gpu", "rtx3090", "--model", "qwen3-8b", "--group-size", "0"], "error: --group-size"),
        (["--gpu", "rtx3090", "--model", "qwen3-8b", "--cores", "4"], "error: --cores applies"),
        (["--gpu", "cpu", "--model", "qwen3-8b", "--cores", "0"], "error: --cores must be"),
        (["--gpu", "rtx3090", "--model", "qwen3-8b", "--clients", "0"], "error: --clients"),
        (
            ["--gpu", "rtx3090", "--model", "qwen3-8b", "--target-concurrency", "0"],
            "error: --target-concurrency",
        ),
        (
            ["--gpu", "rtx3090", "--model", "qwen3-8b", "--max-model-len", "8192"],
            "error: --max-model-len applies to --runtime vllm only",
        ),
        (
            ["--gpu", "rtx3090", "--model", "qwen3-8b", "--vllm-version", "0.9.2"],
            "error: --vllm-version applies to --runtime vllm only",
        ),
        (
            [*H100_VLLM, "--vllm-version", "0.34.0"],
            "error: unknown --vllm-version '0.34.0'; capplan knows vLLM 0.8.0 to 0.33.x",
        ),
        (
            [*H100_VLLM, "--vllm-version", "newest"],
            "error: malformed --vllm-version 'newest'",
        ),
        (
            ["--gpu", "h100", "--model", "qwen3-8b", "--runtime", "vllm", "--max-model-len", "0"],
            "error: --max-model-len must be at least 1",
        ),
        (
            ["--gpu", "h100", "--model", "qwen3-8b", "--runtime", "vllm", "--max-num-seqs", "-1"],
            "error: --max-num-seqs must be at least 1",
        ),
        (
            [*H100_VLLM, "--max-model-len", "99999"],
            "error: --max-model-len 99999 exceeds qwen3-8b's 40960 positions",
        ),
        (
            ["--gpu", "h100", "--model", "qwen3-8b", "--runtime", "vllm", "--max-model-len", "800"],
            "error: --prompt-tokens + --max-tokens = 1024 exceeds --max-model-len 800",
        ),
        (
            [*H100_VLLM, "--gpu-memory-utilization", "1.5"],
            "error: --gpu-memory-utilization must be in (0, 1]",
        ),
        (
            ["--gpu", "rtx3090", "--model", "qwen3-8b", "--emit", "yaml", "x"],
            "error: unknown --emit",
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
    assert namespace["workers"] == 1 and namespace["threads"] == 1
    assert namespace["timeout"] > 0
    assert "CAPPLAN_MAX_CONCURRENT=1" in namespace["raw_env"]


@pytest.mark.parametrize("fmt", ["json", "env", "gunicorn"])
def test_emitted_settings_are_what_capplan_serve_loads(tmp_path: Path, fmt: str) -> None:
    from reference_server.config import resolve_config

    target = tmp_path / f"settings.{fmt}"
    args = ["estimate", "--gpu", "rtx3090", "--model", "qwen3-8b-awq", "--format", "json"]
    result = invoke(*args, "--emit", fmt, str(target))
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)["settings"]
    if fmt == "gunicorn":
        # gunicorn hands raw_env to its workers as environment variables.
        namespace: dict = {}
        exec(compile(target.read_text(), str(target), "exec"), namespace)
        environ = dict(line.split("=", 1) for line in namespace["raw_env"])
        config = resolve_config(environ=environ)
    else:
        config = resolve_config(config_file=target)
    assert {key: getattr(config, key) for key in expected} == expected
    assert set(config.sources) == set(expected)
    assert "--model qwen3-8b-awq" in target.read_text()


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
    assert "torch/vLLM" in gpus.output and "nvidia-smi" in gpus.output
    h200 = next(
        g for g in json.loads(invoke("catalog", "gpus", "-f", "json").output) if g["id"] == "h200"
    )
    assert h200["nvidia_smi_bytes"] == 150_754_820_096 > h200["total_bytes"]
    models = invoke("catalog", "models", "--format", "json")
    rows = json.loads(models.output)
    assert {r["id"] for r in rows} >= {"qwen3-8b", "llama-3.1-8b", "gemma-2-9b"}
    assert all(r["source"] for r in rows)


def test_model_directory_through_the_cli_uses_its_quantization(tmp_path: Path) -> None:
    config = {
        "model_type": "llama",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = invoke("estimate", "--gpu", "rtx3080", "--model", str(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params"] == 8_030_261_248  # Llama-3.1-8B
    assert data["quant"]["name"] == "nf4" and data["quant"]["double_quant"] is True
    assert data["quant_source"] == "config.json"
    off = invoke("estimate", "--gpu", "rtx3080", "--model", str(tmp_path), "--no-double-quant")
    assert off.exit_code == 0 and "nf4 + double quant" not in off.stdout
