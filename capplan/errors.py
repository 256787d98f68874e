"""Errors that carry a message meant for the user."""


class InputError(ValueError):
    """Bad user input. The message is one line that names the fix; the CLI exits 2 on it."""
