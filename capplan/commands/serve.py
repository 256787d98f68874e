"""`capplan serve`: run the reference inference server (reference_server/).

Its options are the settings contract (`capplan.settings`), one flag per setting, generated
here so that a new setting needs no second definition.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Optional

import typer

_HELP = """Run the OpenAI-compatible reference server with admission control.

Settings: flag > environment CAPPLAN_* > --config FILE (from `capplan estimate --emit
json|env|gunicorn`) > default. Binds 127.0.0.1 unless --host says otherwise."""


def serve(config: Path | None = None, **flags: Any) -> None:
    from reference_server import launch
    from reference_server.config import resolve_config

    settings = resolve_config(flags, os.environ, config)
    launch.serve(settings, lambda text: typer.echo(text))


def _signature() -> tuple[inspect.Signature, dict[str, Any]]:
    """serve()'s parameters as typer reads them: `--config`, then one option per setting."""
    from capplan.settings import specs

    config_help = "Settings file from `capplan estimate --emit json|env|gunicorn`."
    params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help=config_help),
            annotation=Optional[Path],  # noqa: UP045 (typer reads the annotation at run time)
        )
    ]
    for spec in specs():
        decl = spec.flag if spec.kind is not bool else f"{spec.flag}/--no-{spec.flag[2:]}"
        params.append(
            inspect.Parameter(
                spec.key,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, decl, help=spec.help_with_unit),
                annotation=Optional[spec.kind],  # noqa: UP045
            )
        )
    annotations = {p.name: p.annotation for p in params}
    return inspect.Signature(params, return_annotation=None), annotations


def register(app: typer.Typer) -> None:
    """Add `capplan serve` to the root app."""
    signature, annotations = _signature()
    serve.__signature__ = signature  # type: ignore[attr-defined]
    serve.__annotations__ = {**annotations, "return": None}
    app.command("serve", help=_HELP)(serve)
