"""The project's error for users' mistakes.

A `UserError` (or a subclass: ConfigError, DataError, CheckpointError) means the input is wrong, not the code:
the CLI prints its one-line message, which names the file, field or value and what is allowed, and exits 2
(`--debug`, or SPECDISTILL_DEBUG=1, shows the traceback). Any other exception is a bug and keeps its traceback
(exit 1).
"""

DEBUG_ENV = "SPECDISTILL_DEBUG"  # set to 1: the CLI prints the traceback of a user error too


class UserError(ValueError):
    """A user's input cannot be used; the message says which input, why, and what is allowed."""


def one_line(message: str) -> str:
    """A message on one line: further lines are joined with '; ' (a list of bad records, say)."""
    lines = [part.strip() for part in str(message).splitlines() if part.strip()]
    return "; ".join(lines)
