"""The one exception type the CLI turns into a one-line error and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager


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


@contextmanager
def user_file(
    path: str, action: str, plainer: Mapping[type[OSError], str] | None = None
) -> Iterator[None]:
    """Turn an OSError on a file the user named into one line, ``cannot ACTION PATH: reason``,
    never a traceback.

    ``plainer`` maps the errors whose system words would mislead here to the message said
    instead (``{path}`` stands for the path): writing into a missing directory is "no such
    directory", not "No such file or directory".
    """
    try:
        yield
    except OSError as error:
        for kind, message in (plainer or {}).items():
            if isinstance(error, kind):
                raise CowtraceError(message.format(path=path)) from None
        raise CowtraceError(f"cannot {action} {path}: {error.strerror or error}") from None
