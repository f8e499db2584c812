"""Errors a user can fix, and the one-line messages about them. Entry points print a UserError
as one line and exit with status 2; a warning is one line too, and the run goes on."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserError(Exception):
    """A mistake in params, data or the environment that the user can fix."""


class ParamsError(UserError):
    """params.yaml is malformed: names the key path and what is allowed."""


class DataError(UserError):
    """A data file is missing, corrupt or does not match what was expected."""


def warn(message: str) -> None:
    """One line on stderr about something the user should know; the run goes on."""
    print(f"warning: {message}", file=sys.stderr)


def first_line(error: BaseException) -> str:
    """The start of an error's message for a one-line report; some (EOFError) have none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


@dataclass(frozen=True)
class Invalid:
    """The first of a pydantic ValidationError's errors, as a one-line message needs it."""

    loc: tuple[str | int, ...]  # where the value lies inside what was validated; () for the whole
    message: str  # pydantic's, without the "Value error, " it puts before a validator's own
    type: str  # pydantic's error type: "extra_forbidden" for an unknown key, "missing", ...
    input: Any  # the value that failed
    others: int  # how many more errors there are

    @property
    def where(self) -> str:
        """The location as a dotted key path ("" for the whole value)."""
        return ".".join(map(str, self.loc))

    def line(self, key: str) -> str:
        """The message for a value under `key`: `key.where: message (got value)`."""
        return f"{key}.{self.where}: {self.message} (got {self.input!r})"


def first_error(error: ValidationError, keep: Callable[[dict[str, Any]], bool] = lambda e: True) -> Invalid:
    """The first of pydantic's errors that `keep` accepts; the first of all where it accepts none."""
    errors = [e for e in error.errors() if keep(e)] or error.errors()
    first = errors[0]
    message = first["msg"].removeprefix("Value error, ")
    return Invalid(tuple(first["loc"]), message, first["type"], first.get("input"), len(errors) - 1)
