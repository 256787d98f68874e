from __future__ import annotations

import pytest
from typer.testing import CliRunner

from capplan.cli import app


@pytest.mark.slow
def test_selftest_reports_requests_per_s_and_streams_held() -> None:
    result = CliRunner().invoke(
        app,
        [
            "selftest",
            "--server",
            "thread",
            "--levels",
            "4",
            "--duration",
            "0.5",
            "--ttft-ms",
            "20",
            "--tpot-ms",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "non-streamed requests/s" in result.output
    assert "streams held with median TTFT error < 2 ms" in result.output
