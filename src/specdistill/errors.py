"""The project's error for users' mistakes.

A `UserError` (or a subclass: ConfigError, DataError) means the input is wrong, not the code: the CLI prints its
one-line message, which names the file, field or value and what is allowed, and exits 2 (`--debug` shows the
traceback). Any other exception is a bug and keeps its traceback (exit 1).
"""


class UserError(ValueError):
    """A user's input cannot be used; the message says which input, why, and what is allowed."""
