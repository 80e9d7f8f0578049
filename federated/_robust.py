"""Shared plumbing of the robust rules that need every update of an iteration at once."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np

from federated.errors import NumericsError, ShapeError
from federated.params import Params, add, flatten, spec_of, unflatten
from federated.strategy import Strategy, Update

__all__ = ["DEFAULT_MAX_UPDATES", "RobustRule", "stack_updates"]

DEFAULT_MAX_UPDATES = 1000


def stack_updates(
    global_params: Params, updates: Sequence[Update], max_updates: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the flat deltas as an (n, d) float32 matrix and the example counts as float64.

    Raises NumericsError for no updates, more than `max_updates` (checked before anything is
    copied), a non-positive or non-integer count or a non-finite value; ShapeError for a delta
    whose spec differs from the model's.
    """
    n = len(updates)
    if n == 0:
        raise NumericsError("no updates to aggregate")
    if n > max_updates:
        raise NumericsError(f"{n} updates exceed this rule's bound of max_updates={max_updates}")
    spec = spec_of(global_params)
    stacked = np.empty((n, flatten(global_params).size), dtype=np.float32)
    weights = np.empty(n, dtype=np.float64)
    for i, u in enumerate(updates):
        if spec_of(u.delta) != spec:
            raise ShapeError(f"update from client {u.client_id} does not match the model spec")
        if isinstance(u.num_examples, bool) or not isinstance(u.num_examples, int | np.integer):
            raise NumericsError(f"num_examples must be an integer, got {u.num_examples!r}")
        if u.num_examples <= 0:
            raise NumericsError(f"num_examples must be positive, got {u.num_examples}")
        stacked[i] = flatten(u.delta)
        weights[i] = float(u.num_examples)
    if not np.all(np.isfinite(stacked)):
        raise NumericsError("an update contains non-finite values")
    return stacked, weights


class RobustRule(Strategy):
    """A rule over all of an iteration's updates at once; memory O(max_updates * model).

    The caller must pass at most `max_updates` updates (NumericsError otherwise). The global
    model moves by `server_lr` times the rule's robust aggregate of the deltas.
    """

    needs_all_updates = True
    max_updates: int = DEFAULT_MAX_UPDATES

    def __init__(self, *, max_updates: int = DEFAULT_MAX_UPDATES, server_lr: float = 1.0) -> None:
        if max_updates < 1:
            raise NumericsError(f"max_updates must be positive, got {max_updates}")
        if not server_lr > 0:
            raise NumericsError(f"server_lr must be positive, got {server_lr}")
        self.max_updates = max_updates
        self.server_lr = server_lr

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """Global + server_lr * the rule's robust aggregate of the deltas."""
        stacked, weights = stack_updates(global_params, updates, self.max_updates)
        step = self.server_lr * self.combine(stacked, weights)
        return add(global_params, unflatten(step.astype(np.float32), spec_of(global_params)))

    @abstractmethod
    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Robust aggregate (float64, shape (d,)) of (n, d) flat deltas with example counts."""
