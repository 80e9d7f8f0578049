"""Errors raised by the pure-numerics package.

Hierarchy::

    ValueError
     └── NumericsError          base: invalid numbers, arguments or state
          ├── PayloadError(reason)   corrupted, hostile or mismatching weight payload
          └── ShapeError             tensor sizes or shapes that do not fit together
"""

from __future__ import annotations

__all__ = ["NumericsError", "PayloadError", "ShapeError"]


class NumericsError(ValueError):
    """Base class for every error raised by `federated`."""


class PayloadError(NumericsError):
    """A weight payload (or stored accumulator) was rejected; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ShapeError(NumericsError):
    """Tensor sizes or shapes do not match what was expected."""
