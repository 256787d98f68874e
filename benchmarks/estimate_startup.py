"""Wall time of `capplan estimate` next to `python -c pass`, measured side by side.

Run: .venv/bin/python benchmarks/estimate_startup.py [--runs 15]
The seed estimate met an earlier target of <= 0.3 s over `python -c pass` before the hf runtime
replayed the caching allocator; it no longer does (docs/benchmarks.md has today's figures). The
H200 case shows what the replay adds when the search must bisect hundreds of requests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

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
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "capplan estimate (table)": [
        sys.executable,
        "-c",
        "from capplan.cli import main; main()",
        *SEED,
    ],
    "capplan estimate (json)": [
        sys.executable,
        "-c",
        "from capplan.cli import main; main()",
        *SEED,
        "--format",
        "json",
    ],
    "h200 qwen3-8b (json)": [
        sys.executable,
        "-c",
        "from capplan.cli import main; main()",
        "estimate",
        "--gpu",
        "h200",
        "--model",
        "qwen3-8b",
        "--format",
        "json",
    ],
}


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={"COLUMNS": "100"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(f"load average (1 min) before the runs: {os.getloadavg()[0]:.2f}")
    for command in COMMANDS.values():  # warm the page cache and .pyc files
        wall_time(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # interleaved, so load on the machine hits all alike
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command))
    load = os.getloadavg()[0]
    print(f"load average (1 min) after the runs: {load:.2f} on {os.cpu_count()} cores")
    base = statistics.median(times["python -c pass"])
    print(f"{'command':28} {'median s':>9} {'min s':>7} {'x python':>9} {'minus python':>13}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:28} {median:9.3f} {min(samples):7.3f} {median / base:9.1f} "
            f"{median - base:13.3f}"
        )


if __name__ == "__main__":
    main()
