"""The root app: every command's InputError becomes one line on stderr and exit 2."""

from __future__ import annotations

from typer.testing import CliRunner

from capplan.cli import app


def test_input_error_from_any_command_exits_2_with_one_line() -> None:
    result = CliRunner().invoke(app, ["plan", "--rate", "3"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: give exactly one of --run DIR, --sweep DIR, or --gpu with --model"
    ]
    assert "Traceback" not in result.output


def test_version_flag_prints_the_version() -> None:
    from capplan import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"capplan {__version__}"
