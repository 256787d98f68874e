"""`python -m reference_server ...`: the same options as `capplan serve`, without the capplan CLI.

Options come from the settings contract (`capplan.settings`): one flag per setting.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from capplan.errors import InputError
from capplan.settings import specs


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(
        prog="python -m reference_server",
        description="The OpenAI-compatible reference server with admission control. Settings: "
        "flag > environment CAPPLAN_* > --config FILE > default.",
    )
    out.add_argument("--config", type=Path, default=None, help="Settings file (--emit output).")
    for spec in specs():
        if spec.kind is bool:
            out.add_argument(spec.flag, dest=spec.key, action=argparse.BooleanOptionalAction,
                             default=None, help=spec.help_with_unit)  # fmt: skip
        else:
            # Values stay text: the contract coerces every layer alike, with one error message.
            out.add_argument(spec.flag, dest=spec.key, default=None, help=spec.help_with_unit)
    return out


def main(argv: list[str] | None = None) -> None:
    from reference_server import launch
    from reference_server.config import resolve_config

    args = vars(parser().parse_args(argv))
    config = args.pop("config")
    try:
        settings = resolve_config(args, os.environ, config)
        launch.serve(settings, lambda text: print(text, flush=True))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
