"""Errors that carry a message meant for the user, and the exit codes they end in."""

# The exit codes of every command that runs load (docs/ci.md, "Exit codes"); 0 when it ran and
# every threshold or SLO held.
EXIT_FAILED = 1  # a threshold or SLO failed
EXIT_USAGE = 2  # bad input: one line naming the fix
EXIT_TARGET = 3  # the target failed: unreachable, no request succeeded, or the run stopped early
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: what finished is kept


class InputError(ValueError):
    """Bad user input. The message is one line that names the fix; the CLI exits 2 on it."""


class TargetError(RuntimeError):
    """The target cannot be measured (nothing answers, every request refused). The message is
    one line with the server's own reason; the CLI exits 3 on it."""
