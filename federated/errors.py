"""Errors raised by the pure-numerics package.

Hierarchy::

    ValueError
     └── NumericsError          base: invalid numbers, arguments or state
          ├── PayloadError(reason)   corrupted, hostile or mismatching weight payload
          ├── ShapeError             tensor sizes or shapes that do not fit together
          ├── BudgetExceeded(epsilon, budget, rounds)   a round would overspend privacy
          └── SecAggError(reason)    (federated.secagg) a secure-aggregation step failed
               └── ThresholdError(needed, available, client_id)   too few shares survive
"""

from __future__ import annotations

__all__ = ["BudgetExceeded", "NumericsError", "PayloadError", "ShapeError"]


class NumericsError(ValueError):
    """Base class for every error raised by `federated`."""


class PayloadError(NumericsError):
    """A weight payload (or stored accumulator) was rejected; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ShapeError(NumericsError):
    """Tensor sizes or shapes do not match what was expected."""


class BudgetExceeded(NumericsError):
    """A round would take epsilon past the budget; nothing was spent."""

    def __init__(self, epsilon: float, budget: float, rounds: int) -> None:
        super().__init__(
            f"{rounds} rounds would reach epsilon {epsilon:.4g}, over the budget {budget:.4g}"
        )
        self.epsilon = epsilon
        self.budget = budget
        self.rounds = rounds
