"""How often `capplan compare` calls noise a regression, and how often it catches a real one.

Pairs of synthetic runs with lognormal latency noise: "same" pairs come from one configuration,
"slower" pairs have every TPOT scaled up. Each pair is judged twice, by the limit alone (what a
threshold on two summary.json files does) and by capplan's limit + test on the raw records.
Prints the rates side by side for a few request counts.

    .venv/bin/python benchmarks/compare_noise.py --pairs 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from capplan.loadtest.record import RequestRecord
from capplan.loadtest.summary import summarize
from capplan.loadtest.summary_model import RunSummary
from capplan.regression.compare import compare_runs
from capplan.regression.runs import LoadedRun


def synthetic_run(rng: np.random.Generator, n: int, tpot_ms: float, sigma: float) -> LoadedRun:
    records = []
    t = 1000.0
    for i in range(n):
        ttft = 0.05 * rng.lognormal(0.0, sigma)
        tpot = tpot_ms / 1000 * rng.lognormal(0.0, sigma / 3)
        chunks = [t + ttft + k * tpot for k in range(32)]
        records.append(
            RequestRecord(
                f"r{i}", step="concurrency=4", send=t, first_token=chunks[0], end=chunks[-1],
                chunk_times=chunks, status=200, output_tokens=32, output_tokens_source="server",
            )
        )  # fmt: skip
        t += 0.05
    summary = RunSummary.from_dict(summarize(records, {"steps": ["concurrency=4"]}))
    return LoadedRun(Path("synthetic"), summary, records)


def rates(
    n: int, pairs: int, slowdown: float, sigma: float, limits: list[str]
) -> tuple[float, float]:
    rng = np.random.default_rng(n)
    limit_only = tested = 0
    for seed in range(pairs):
        base = synthetic_run(rng, n, 10.0, sigma)
        current = synthetic_run(rng, n, 10.0 * slowdown, sigma)
        with_test = compare_runs(base, current, limits, seed=seed)
        bare = compare_runs(
            LoadedRun(base.path, base.summary), LoadedRun(current.path, current.summary), limits
        )
        tested += not with_test.passed
        limit_only += not bare.passed
    return limit_only / pairs, tested / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--sigma", type=float, default=0.3, help="lognormal sigma of TTFT")
    args = parser.parse_args()
    limits = ["p95_ttft_ms=10%", "p95_e2e_ms=10%", "p50_tpot_ms=10%"]
    print(f"limits {' '.join(limits)}; TTFT lognormal sigma {args.sigma}; {args.pairs} pairs")
    print("requests | same config flagged: limit only / capplan | TPOT x1.25 caught: ditto")
    for n in (10, 30, 100, 300):
        same = rates(n, args.pairs, 1.0, args.sigma, limits)
        slower = rates(n, args.pairs, 1.25, args.sigma, limits)
        print(f"{n:8d} | {same[0]:6.1%} / {same[1]:6.1%} | {slower[0]:6.1%} / {slower[1]:6.1%}")


if __name__ == "__main__":
    main()
