"""`--runtime vllm` against published vLLM V1 startup logs (vllm_startup_logs.toml), each row
recomputed through capplan's own estimate entry. Run this file with Python to print the table."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from capplan.estimate.options import EstimateOptions, estimate_from_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DATA = Path(__file__).with_name("vllm_startup_logs.toml")
DOC = Path(__file__).resolve().parents[2] / "docs" / "estimator.md"
MAE_LIMIT = 5.0  # percent, the bar


@dataclass(frozen=True)
class StartupLog:
    """One published startup log: its inputs as capplan options, and what vLLM logged."""

    id: str
    source: str
    model: str
    version: str
    max_model_len: int
    logged_tokens: int
    tolerance: float
    marks: str
    gpu: str | None = None
    vram: str | None = None
    bandwidth: str | None = None
    utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = False

    def options(self) -> EstimateOptions:
        return EstimateOptions(
            model=self.model,
            gpu=self.gpu,
            vram=self.vram,
            bandwidth=self.bandwidth,
            runtime="vllm",
            vllm_version=self.version,
            gpu_memory_utilization=self.utilization,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enforce_eager=self.enforce_eager,
        )


def startup_logs() -> list[StartupLog]:
    with DATA.open("rb") as handle:
        rows: list[dict[str, Any]] = tomllib.load(handle)["log"]
    return [StartupLog(**row) for row in rows]


def predicted_tokens(log: StartupLog) -> int:
    budget = estimate_from_options(log.options()).vllm
    assert budget is not None
    return budget.kv_cache_tokens


def error_percent(log: StartupLog) -> float:
    return 100.0 * (predicted_tokens(log) - log.logged_tokens) / log.logged_tokens


def mean_absolute_error(logs: list[StartupLog]) -> float:
    return sum(abs(error_percent(log)) for log in logs) / len(logs)


@pytest.mark.parametrize("log", startup_logs(), ids=lambda log: log.id)
def test_each_published_log_is_predicted_within_its_tolerance(log: StartupLog) -> None:
    assert abs(error_percent(log)) <= log.tolerance


def test_mean_absolute_error_over_the_published_logs_is_under_five_percent() -> None:
    logs = startup_logs()
    assert len(logs) >= 8
    assert mean_absolute_error(logs) <= MAE_LIMIT


def test_the_doc_table_shows_what_capplan_predicts_today() -> None:
    text = DOC.read_text()
    for log in startup_logs():
        row = next(line for line in text.splitlines() if line.startswith(f"| {log.id} |"))
        assert f"{predicted_tokens(log):,}" in row and f"{log.logged_tokens:,}" in row
        assert f"{error_percent(log):+.2f}%" in row
    assert f"**{mean_absolute_error(startup_logs()):.2f}%**" in text


def main() -> None:
    """Print the table docs/estimator.md carries."""
    logs = startup_logs()
    for log in logs:
        result = estimate_from_options(log.options())
        v = result.vllm
        assert v is not None
        print(
            f"| {log.id} | {result.gpu.name} | {log.model} | {log.version} | "
            f"{v.gpu_memory_utilization} | {log.max_model_len:,} | {v.runner.upper()} "
            f"{v.sampler} | {log.logged_tokens:,} | {v.kv_cache_tokens:,} | "
            f"{error_percent(log):+.2f}% |"
        )
    print(f"MAE over {len(logs)} logs: **{mean_absolute_error(logs):.2f}%**")


if __name__ == "__main__":
    main()
