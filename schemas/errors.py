"""Errors of the contract.

SchemaError(ValueError)
 └── DecodeError      bytes that are not a valid message (reason says why)
"""


class SchemaError(ValueError):
    """Base of every contract error."""


class DecodeError(SchemaError):
    """Bytes that do not decode into the expected message."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        self.reason = reason
        self.topic = topic
        super().__init__(f"{topic}: {reason}" if topic else reason)
