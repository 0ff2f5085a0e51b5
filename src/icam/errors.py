"""The user's mistakes, told apart from icam's: a ``UserError`` (bad input: a config key, a data
row, a path, a checkpoint, an option) is one line and exit status 2 on the command line; any
other exception is a bug in icam (exit status 1, with how to report it)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input; the message names the key, file or row and says what was expected, and
    ``hint`` (if any) the way on. A ValueError, so code that catches those keeps working."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint
