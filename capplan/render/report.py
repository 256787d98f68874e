"""What `capplan report` prints: the files it wrote, report.html first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def render_written(run_dir: Path, written: Sequence[Path]) -> str:
    first = {"report.html": 0, "report.md": 1}
    ordered = sorted(written, key=lambda p: (first.get(p.name, 2), str(p)))
    lines = [f"rebuilt {len(written)} files in {run_dir}:"]
    lines += [f"  {path}" for path in ordered]
    return "\n".join(lines)
