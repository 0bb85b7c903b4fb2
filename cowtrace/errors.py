"""The one exception type the CLI turns into a one-line error and a non-zero exit."""

from __future__ import annotations


class CowtraceError(Exception):
    """A problem the user can act on: the message is shown as is, on one line.

    ``hint`` is the command or action that fixes it, when there is one.
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (fix: {self.hint})"
        return self.message
