from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from capplan.errors import InputError
from capplan.planning.sweep import SweepInterrupted, SweepSpec, parse_slos, run_sweep
from reference_server.emulated import EmulatedTiming

from ..regression.conftest import load_run_at


def _summary(load: float, *, ttft: float, rps: float, rejected: int = 0) -> dict[str, Any]:
    total = 100
    return {
        "requests": {
            "total": total,
            "ok": total - rejected,
            "failed": rejected,
            "by_status": {"200": total - rejected, "503": rejected},
        },
        "error_rate": rejected / total,
        "ttft_ms": {"p50": ttft / 2, "p95": ttft},
        "e2e_ms": {"p50": ttft * 2, "p95": ttft * 3},
        "throughput": {"requests_per_s": rps, "output_tokens_per_s": rps * 10},
    }


class FakeServer:
    """TTFT p95 = 100 ms x load; throughput linear up to `ceiling`."""

    def __init__(self, ceiling: float = 1000.0) -> None:
        self.calls: list[float] = []
        self.ceiling = ceiling

    def __call__(self, load: float, repeat: int, run_dir: Path) -> Mapping[str, Any]:
        self.calls.append(load)
        summary = _summary(load, ttft=100.0 * load, rps=min(load, self.ceiling))
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary


def test_ladder_then_bisection_finds_the_slo_boundary(tmp_path: Path) -> None:
    server = FakeServer()
    spec = SweepSpec("concurrency", parse_slos(["p95(ttft)<1.05s"]), max_load=64)
    result = run_sweep(spec, server, tmp_path)
    assert server.calls == [1, 2, 4, 8, 16, 12, 10, 11]
    assert result.highest_safe == 10 and result.first_failure == 11
    assert result.stop_reason == "slo"
    assert json.loads((tmp_path / "sweep.json").read_text())["highest_safe"] == 10


def test_saturation_stops_the_ladder_early(tmp_path: Path) -> None:
    server = FakeServer(ceiling=4.0)
    spec = SweepSpec("concurrency", parse_slos(["p95(ttft)<100s"]), max_load=64)
    result = run_sweep(spec, server, tmp_path)
    assert server.calls == [1, 2, 4, 8]
    assert result.stop_reason == "saturated"
    assert result.highest_safe == 4


def test_a_resumed_sweep_reuses_finished_points(tmp_path: Path) -> None:
    spec = SweepSpec("concurrency", parse_slos(["p95(ttft)<1.05s"]), max_load=64)
    run_sweep(spec, FakeServer(), tmp_path)
    (tmp_path / "concurrency=11" / "summary.json").unlink()  # as if killed mid-point
    again = FakeServer()
    result = run_sweep(spec, again, tmp_path)
    assert again.calls == [11]
    assert result.highest_safe == 10


def test_ctrl_c_stops_the_sweep_and_the_resume_measures_that_point_again(
    tmp_path: Path,
) -> None:
    spec = SweepSpec("concurrency", parse_slos(["p95(ttft)<1.05s"]), max_load=64)

    class InterruptedAt4(FakeServer):
        def __call__(self, load: float, repeat: int, run_dir: Path) -> Mapping[str, Any]:
            summary = dict(super().__call__(load, repeat, run_dir))
            if load == 4:  # the load test returns what finished, marked interrupted
                summary["interrupted"] = True
                (run_dir / "summary.json").write_text(json.dumps(summary))
            return summary

    first = InterruptedAt4()
    with pytest.raises(SweepInterrupted, match="concurrency=4"):
        run_sweep(spec, first, tmp_path)
    assert first.calls == [1, 2, 4]  # nothing after the interrupted point
    again = FakeServer()
    result = run_sweep(spec, again, tmp_path)
    assert again.calls[0] == 4  # 1 and 2 reused, the partial 4 measured afresh
    assert [p.resumed for p in result.points[:3]] == [True, True, False]
    assert result.highest_safe == 10


def test_a_resume_into_another_workloads_sweep_is_refused(tmp_path: Path) -> None:
    spec = SweepSpec("concurrency", parse_slos(["p95(ttft)<1.05s"]), max_load=64)
    run_sweep(spec, FakeServer(), tmp_path, workload={"max_tokens": 64})
    with pytest.raises(InputError, match="max_tokens"):
        run_sweep(spec, FakeServer(), tmp_path, workload={"max_tokens": 128})
    fresh = FakeServer()
    run_sweep(spec, fresh, tmp_path, workload={"max_tokens": 128}, resume=False)
    assert fresh.calls[:2] == [1, 2]


def test_repeats_report_their_spread_and_all_must_pass(tmp_path: Path) -> None:
    def noisy(load: float, repeat: int, run_dir: Path) -> Mapping[str, Any]:
        return _summary(load, ttft=100.0 * load * (1.2 if repeat == 2 else 1.0), rps=load)

    spec = SweepSpec(
        "concurrency", parse_slos(["p95(ttft)<1.1s"]), ladder=(8.0, 10.0), repeats=3, bisect=False
    )
    result = run_sweep(spec, noisy, tmp_path)
    assert result.point(8.0) is not None and result.point(8.0).spread["p95_ttft_ms"] == (800, 960)
    assert result.highest_safe == 8.0  # 10 fails in its third repeat (1200 ms)


def test_knee_is_where_latency_starts_to_buy_little_throughput(tmp_path: Path) -> None:
    curve = {1: (10, 100), 2: (20, 105), 4: (38, 115), 8: (45, 300), 16: (47, 900)}

    def server(load: float, repeat: int, run_dir: Path) -> Mapping[str, Any]:
        rps, e2e = curve[int(load)]
        summary = _summary(load, ttft=10, rps=rps)
        summary["e2e_ms"] = {"p50": e2e / 2, "p95": e2e}
        return summary

    spec = SweepSpec("concurrency", parse_slos(["p95(ttft)<1s"]), max_load=16)
    assert run_sweep(spec, server, tmp_path).knee == 4


def test_spec_rejects_nonsense() -> None:
    with pytest.raises(InputError):
        SweepSpec("concurrency", (), start=0)
    with pytest.raises(InputError):
        SweepSpec("concurrency", (), factor=1.0)


def _real_point(url: str, **shape: Any):  # type: ignore[no-untyped-def]
    def run_point(load: float, repeat: int, run_dir: Path) -> Mapping[str, Any]:
        return load_run_at(url, run_dir, concurrency=int(load), **shape).summary

    return run_point


@pytest.mark.slow
def test_sweep_finds_the_emulated_servers_gate_where_503s_begin(
    tmp_path: Path, serve_emulated
) -> None:
    with serve_emulated(
        EmulatedTiming(ttft_ms=50, tpot_ms=10), max_concurrent=4, queue_size=0
    ) as url:
        spec = SweepSpec("concurrency", parse_slos([]), max_load=8)
        result = run_sweep(spec, _real_point(url, requests=16, max_tokens=8), tmp_path)
    assert result.highest_safe == 4
    assert result.first_rejection == 5
    assert result.point(5) is not None and "error_rate<1%" in result.point(5).broken


@pytest.mark.slow
def test_sweep_finds_the_slo_boundary_of_a_known_timing(tmp_path: Path, serve_emulated) -> None:
    # Decode step = 4 ms + 2 ms per 105 KV tokens: a batch of c requests holding ~105 tokens
    # each (100 prompt + half of 10 output) decodes at 4 + 2c ms per token, so
    # p50(tpot) < 13 ms holds up to c = 4 (12 ms) and breaks at c = 5 (14 ms).
    timing = EmulatedTiming(decode_step_base_ms=4.0, decode_step_ms_per_kv_token=2.0 / 105)
    with serve_emulated(timing) as url:
        spec = SweepSpec("concurrency", parse_slos(["p50(tpot)<13ms"]), max_load=8)
        result = run_sweep(
            spec, _real_point(url, requests=16, prompt_tokens=100, max_tokens=10), tmp_path
        )
    assert result.highest_safe == 4, [(p.load, p.figures.get("p50_tpot_ms")) for p in result.points]
    assert result.first_failure == 5
    assert result.first_rejection is None


def test_the_plot_is_a_png_even_with_an_slo_far_above_the_curves(tmp_path: Path) -> None:
    from capplan.planning.plot import plot_sweep

    spec = SweepSpec("concurrency", parse_slos(["p95(ttft)<1.05s", "p95(e2e)<600s"]), max_load=16)
    result = run_sweep(spec, FakeServer(ceiling=4.0), tmp_path)
    png = plot_sweep(result, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
