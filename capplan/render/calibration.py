"""What `capplan calibrate` prints: the fitted step costs and each point, measured vs fitted."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from capplan.estimate.calibration import CalibrationProfile

if TYPE_CHECKING:
    from rich.console import Console


def print_profile(profile: CalibrationProfile, path: Path, console: Console) -> None:
    from rich.table import Table

    fitted = set(profile.measured)

    def mark(name: str) -> str:
        return "measured" if name in fitted else "not constrained: default or bound"

    title = f"Calibration: {profile.model} on {profile.gpu}, runtime {profile.runtime}"
    summary = Table(title=title, title_justify="left", show_header=False, box=None)
    summary.add_column("term", style="bold")
    summary.add_column("value", justify="right")
    summary.add_column("note", style="dim")
    summary.add_row(
        "step floor",
        f"{profile.floor_ms:.2f} ms",
        f"{profile.floor_ms_per_layer:.3f} ms x {profile.layers} layers; {mark('floor')}",
    )
    summary.add_row(
        "host per sequence", f"{profile.host_ms_per_sequence:.3f} ms", mark("per-sequence")
    )
    summary.add_row(
        "bandwidth efficiency", f"{profile.bandwidth_efficiency:.3g}", mark("bandwidth")
    )
    summary.add_row("compute efficiency", f"{profile.compute_efficiency:.3g}", mark("compute"))
    summary.add_row("request overhead", f"{profile.overhead_ms:.1f} ms", mark("overhead"))
    summary.add_row("fit error (rms)", f"{profile.fit_rms_error:.1%}", "over every point below")
    console.print(summary)
    points = Table(title="Points", title_justify="left")
    for column in (
        "point",
        "requests",
        "batch",
        "prompt",
        "step ms",
        "fitted",
        "TTFT ms",
        "fitted",
    ):
        points.add_column(column, justify="right")
    for row in profile.points:
        points.add_row(
            str(row["label"]),
            str(row["requests"]),
            f"{row['batch']:g}",
            f"{row['prompt_tokens']:g}",
            f"{row['step_ms']:.2f}",
            f"{row['fitted_step_ms']:.2f}",
            f"{row['ttft_ms']:.1f}",
            f"{row['fitted_ttft_ms']:.1f}" if "fitted_ttft_ms" in row else "",
        )
    console.print(points)
    console.print(f"wrote {path}; use it with --calibration {path}", highlight=False)
