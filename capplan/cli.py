"""The `capplan` command line: parse, call the core, render.

Each command lives in `capplan.commands.<name>` with a `register(app)` function. Those modules
import only the standard library and typer at module level, so `capplan estimate` stays fast.
"""

from __future__ import annotations

import sys

import typer

from capplan import __version__
from capplan.commands import (
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
from capplan.errors import InputError

app = typer.Typer(
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
    plan,
    compare,
    demo,
):
    _module.register(app)


def main() -> None:
    try:
        app()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
