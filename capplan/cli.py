"""The `capplan` command line: parse, call the core, render.

Each command lives in `capplan.commands.<name>` with a `register(app)` function. Those modules
import only the standard library and typer at module level, so `capplan estimate` stays fast.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from capplan import __version__
from capplan.commands import (
    calibrate,
    catalog,
    compare,
    demo,
    estimate,
    loadtest,
    locust_worker,
    plan,
    report,
    selftest,
    serve,
    sweep,
    validate,
)
from capplan.errors import EXIT_TARGET, EXIT_USAGE, InputError, TargetError


class _CapplanGroup(TyperGroup):
    """Turns `InputError` (exit 2) and `TargetError` (exit 3) from any command into one line
    on stderr."""

    def invoke(self, ctx: Any) -> Any:  # click.Context, vendored privately by typer
        try:
            return super().invoke(ctx)
        except InputError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except TargetError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_TARGET) from None


app = typer.Typer(
    cls=_CapplanGroup,
    name="capplan",
    help="Capacity planning and load testing for GPU model-inference services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"capplan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    """Capacity planning and load testing for GPU model-inference services."""


for _module in (
    estimate,
    catalog,
    serve,
    loadtest,
    report,
    selftest,
    locust_worker,
    sweep,
    validate,
    calibrate,
    plan,
    compare,
    demo,
):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
