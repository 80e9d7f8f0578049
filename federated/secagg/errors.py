"""Errors raised by secure aggregation.

Hierarchy::

    federated.errors.NumericsError
     └── SecAggError(reason)            a protocol step was refused or its inputs are inconsistent
          └── ThresholdError(needed, available, client_id)
                                        fewer than t shares or survivors: nothing can be unmasked
"""

from __future__ import annotations

from federated.errors import NumericsError

__all__ = ["SecAggError", "ThresholdError"]


class SecAggError(NumericsError):
    """A secure-aggregation step was refused; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ThresholdError(SecAggError):
    """Fewer than `needed` shares (or survivors) are `available`; `client_id` whose, if one."""

    def __init__(self, needed: int, available: int, client_id: int | None = None) -> None:
        whose = "survivors" if client_id is None else f"shares of client {client_id}"
        super().__init__(f"need at least {needed} {whose}, have {available}")
        self.needed = needed
        self.available = available
        self.client_id = client_id
