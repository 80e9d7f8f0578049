"""Errors a handler raises; the runtime owns the policy for each.

FlError
 ├── Rejected(reason)        input refused: reported on fl/errors/{service}, state untouched
 │    └── StaleRound         the event belongs to a round or iteration that has moved on
 └── SagaConflict            an optimistic transition kept losing to concurrent writers
"""


class FlError(Exception):
    """Base of the service errors."""


class Rejected(FlError):
    """Input the service refuses; the reason goes to `fl/errors/{service}`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StaleRound(Rejected):
    """An event for a round or iteration that is no longer current."""


class SagaConflict(FlError):
    """An optimistic Redis transition lost to a concurrent writer too many times."""
