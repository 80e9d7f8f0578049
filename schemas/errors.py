"""Errors of the contract, and how a validation error reads in one line.

SchemaError(ValueError)
 └── DecodeError      bytes that are not a valid message (reason says why)
"""

from pydantic import ValidationError


def first_error(exc: ValidationError, *, options: bool = False, whole: str = "message") -> str:
    """The first of a validation error's complaints, in one line: `where: what`.

    `options` names the field as a command-line option (`--learning-rate`); `whole` names
    what a complaint about no field in particular is about.
    """
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    where = "--" + loc[0].replace("_", "-") if options and loc else ".".join(loc) or whole
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


class SchemaError(ValueError):
    """Base of every contract error."""


class DecodeError(SchemaError):
    """Bytes that do not decode into the expected message."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        self.reason = reason
        self.topic = topic
        super().__init__(f"{topic}: {reason}" if topic else reason)
