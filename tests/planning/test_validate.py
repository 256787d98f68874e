from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from capplan.errors import InputError, TargetError
from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.model_spec import resolve_model
from capplan.loadtest.summary import summarize
from capplan.loadtest.summary_model import RunConfig, RunSummary
from capplan.planning.validate import (
    WorkloadShape,
    check_same_workload,
    check_target_answered,
    estimated_figures,
    measured_figures,
    served_prompt_tokens,
    sweep_safe,
    telemetry_peaks,
    validate,
)
from reference_server.emulated import EmulatedTiming

from ..regression.conftest import load_run_at, synthetic_run, write_run

# 10 ms per step plus 1 ms per 100 KV tokens; prefill 0.05 ms per prompt token; 1 KiB per token.
TIMING = EmulatedTiming(
    prefill_ms_per_token=0.05,
    decode_step_base_ms=10.0,
    decode_step_ms_per_kv_token=0.01,
    kv_bytes_per_token=1024,
    kv_budget_bytes=1024 * 1000,
)


def test_estimate_follows_the_service_timing_by_hand() -> None:
    figures = estimated_figures(TIMING, WorkloadShape(prompt_tokens=100, output_tokens=11,
                                                      concurrency=2))  # fmt: skip
    # Decode: 2 requests holding 100 + 5.5 tokens each -> 10 + 0.01 * 211 = 12.11 ms a token.
    assert figures["tpot_ms"] == pytest.approx(12.11)
    # First token: max(prefill 5 ms, one step beside 1.5 prompts = 10 + 1.5 ms).
    assert figures["ttft_ms"] == pytest.approx(11.5)
    assert figures["e2e_ms"] == pytest.approx(11.5 + 10 * 12.11)
    assert figures["safe_concurrency"] == 9  # 1000 tokens of KV / 111 per request
    assert figures["kv_peak_mib"] == pytest.approx(2 * 111 * 1024 / 2**20)


@pytest.mark.parametrize(
    ("gpu", "model"),
    [("rtx3080", "qwen3-8b-int8"), ("a100-80", "llama-3.1-8b"), ("l4", "qwen3-4b")],
)
def test_memory_rows_are_the_estimators_own_terms_at_the_validated_concurrency(
    gpu: str, model: str
) -> None:
    request = EstimateRequest(
        resolve_gpu(gpu), resolve_model(model), prompt_tokens=256, max_tokens=64, concurrency=2
    )
    m = estimate(request).memory
    shape = WorkloadShape(prompt_tokens=256, output_tokens=64, concurrency=2)
    figures = estimated_figures(TIMING, shape, memory=m, kv_ceiling=7)
    assert figures["kv_peak_mib"] == pytest.approx(2 * m.kv_per_request_bytes / 2**20)
    assert figures["peak_memory_mib"] == pytest.approx(m.peak_bytes / 2**20)
    assert figures["safe_concurrency"] == 7
    # A memory row at another concurrency than the estimate's would compare different loads.
    other = WorkloadShape(prompt_tokens=256, output_tokens=64, concurrency=3)
    assert "peak_memory_mib" not in estimated_figures(TIMING, other, memory=m)


def test_a_row_off_by_98_percent_never_reads_agrees_and_says_what_to_calibrate() -> None:
    result = validate({"ttft_ms": 20.0, "tpot_ms": 4.4}, {"ttft_ms": 912.0, "tpot_ms": 94.3},
                      subject="x", tolerance_pct=25)  # fmt: skip
    for row in result.rows:
        assert row.agrees(25) is False
        assert not row.note.startswith("agrees") and "off by" in row.note
        assert "calibrate" in row.note
    good = validate({"tpot_ms": 10.0}, {"tpot_ms": 10.5}, subject="x")
    assert good.rows[0].note.startswith("agrees (-5%")


def test_disagreement_beyond_tolerance_is_reported() -> None:
    estimate = {"tpot_ms": 10.0, "output_tokens_per_s": 100.0}
    good = validate(estimate, {"tpot_ms": 10.4, "output_tokens_per_s": 97.0}, subject="x")
    bad = validate(estimate, {"tpot_ms": 14.0, "output_tokens_per_s": 97.0}, subject="x")
    assert good.agrees and not bad.agrees
    assert bad.rows[0].error_pct == pytest.approx(100 * (10 - 14) / 14)


def test_telemetry_peaks_read_nvml_over_the_servers_stats(tmp_path: Path) -> None:
    csv = tmp_path / "telemetry.csv"
    csv.write_text(
        "t,gpu0_mem_used_mib,gpu1_mem_used_mib,stats_gpu_memory_used_mib,stats_emulated\n"
        "1,100,50,10,\n2,300,200,20,\n3,250,,30,\n"
    )
    assert telemetry_peaks(csv) == {"peak_memory_mib": 500.0}
    emulated = tmp_path / "emulated.csv"
    emulated.write_text("t,stats_gpu_memory_used_mib,stats_emulated\n1,5,True\n2,7,True\n")
    assert telemetry_peaks(emulated) == {"kv_peak_mib": 7.0}


def test_emulated_backend_agrees_with_its_own_estimate(tmp_path: Path, serve_emulated) -> None:
    shape = WorkloadShape(prompt_tokens=100, output_tokens=12, concurrency=2)
    with serve_emulated(TIMING) as url:
        run = load_run_at(url, tmp_path / "run", requests=10, concurrency=2, prompt_tokens=100,
                          max_tokens=12)  # fmt: skip
    result = validate(
        estimated_figures(TIMING, shape),
        measured_figures(
            RunSummary.from_dict(run.summary), telemetry_csv=run.out_dir / "telemetry.csv"
        ),
        subject="emulated",
    )
    errors = {r.name: r.error_pct for r in result.rows}
    tpot_error, tokens_error = errors["decode ms/token (p50 TPOT)"], errors["output tokens/s"]
    assert tpot_error is not None and abs(tpot_error) < 5
    assert tokens_error is not None and abs(tokens_error) < 15
    assert result.agrees, [(r.name, r.estimate, r.measured) for r in result.rows]


def closed_loop(concurrency: int = 4, prompt: int = 16, output: int = 16) -> RunConfig:
    fixed = {"dist": "fixed"}
    return RunConfig({"concurrency": [concurrency], "rate": [],
                      "prompt_tokens": {**fixed, "value": prompt},
                      "max_tokens": {**fixed, "value": output}})  # fmt: skip


def test_a_finished_run_of_another_workload_is_refused_naming_what_differs() -> None:
    shape = WorkloadShape(prompt_tokens=16, output_tokens=16, concurrency=4)
    check_same_workload(closed_loop(), shape, Path("run"))
    with pytest.raises(InputError, match=r"concurrency \[8\] \(not \[4\]\)") as raised:
        check_same_workload(closed_loop(concurrency=8), shape, Path("run"))
    assert "prompt_tokens" not in str(raised.value)
    open_loop = RunConfig({**closed_loop().data, "concurrency": [], "rate": [2.0]})
    with pytest.raises(InputError, match="open loop"):
        check_same_workload(open_loop, replace(shape, concurrency=0), Path("run"))


def test_served_prompt_tokens_only_when_the_server_counted_every_prompt() -> None:
    run = synthetic_run(1, ttft_ms=50, tpot_ms=10, n=6)
    for record in run.records:
        record.prompt_tokens, record.prompt_tokens_source = 23, "server"
    assert served_prompt_tokens(RunSummary.from_dict(summarize(run.records))) == 23
    run.records[0].prompt_tokens_source = "tokenizer"
    assert served_prompt_tokens(RunSummary.from_dict(summarize(run.records))) is None


def test_sweep_safe_is_the_last_concurrency_before_the_first_refusal(tmp_path: Path) -> None:
    def sweep(**data: object) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / "sweep.json").write_text(json.dumps(data))
        return folder

    points = [{"load": load} for load in (1, 2, 4, 8)]
    assert sweep_safe(sweep(axis="concurrency", first_rejection=8, points=points)) == 4.0
    assert sweep_safe(sweep(axis="concurrency", first_rejection=None, points=points)) is None
    assert sweep_safe(sweep(axis="concurrency", first_rejection=1, points=points)) == 0.0
    with pytest.raises(InputError, match="concurrency sweep"):
        sweep_safe(sweep(axis="rate", points=points))


def test_a_run_that_stopped_on_a_broken_target_is_not_compared(tmp_path: Path) -> None:
    run = synthetic_run(1, ttft_ms=50, tpot_ms=10, n=6)
    folder = write_run(run, tmp_path / "answered")
    check_target_answered(run.summary, folder)
    # Some requests succeeded before the stop: the figures would still measure the failure.
    stop = {"step": "concurrency=4", "reason": "every request in 5s refused (503)"}
    stopped = replace(run, summary=RunSummary.from_dict(summarize(run.records, stopped=stop)))
    folder = write_run(stopped, tmp_path / "stopped")
    with pytest.raises(TargetError, match="stopped early in concurrency=4: every request"):
        check_target_answered(stopped.summary, folder)
    failed = synthetic_run(2, ttft_ms=50, tpot_ms=10, n=6, fail=6)
    folder = write_run(failed, tmp_path / "failed")
    with pytest.raises(TargetError, match=r"no request succeeded \(6 sent: 503 x6\)"):
        check_target_answered(failed.summary, folder)
