"""Where command output goes: the terminal as it is, or a wide console for a pipe or CI log."""

from __future__ import annotations

from rich.console import Console


def stdout_console() -> Console:
    """The terminal, or a wide console for a pipe or CI log so no column is squeezed."""
    console = Console()
    return console if console.is_terminal else Console(width=160)
