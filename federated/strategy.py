"""The server-side rule of a federated iteration, as a small ABC (cf. Flower's Strategy).

A strategy turns one iteration's client updates (deltas against the global model they started
from, with example counts) into the next global model. Strategies that keep state across
iterations (server momentum, adaptive moments) keep it on the instance. Wrappers (differential
privacy, norm bounding) take another strategy and delegate to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated.aggregate import FedAvgAccumulator
from federated.errors import ShapeError
from federated.params import Params, ParamSpec, add, flatten, spec_of, unflatten


@dataclass(frozen=True)
class Update:
    """One client's contribution: its delta against the global model, and its weight."""

    delta: Params
    num_examples: int
    client_id: int = -1


class Strategy(ABC):
    """Server rule: global model + this iteration's updates -> next global model."""

    #: Whether `aggregate` needs every update at once (robust rules); such a strategy bounds
    #: its memory by `max_updates` and the caller must not pass more.
    needs_all_updates: bool = False
    max_updates: int | None = None

    @abstractmethod
    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """Return the next global model."""


def weighted_mean_delta(updates: Sequence[Update], spec: ParamSpec) -> np.ndarray:
    """Example-weighted mean of the updates' flat deltas (float64), streamed: memory O(model).

    An update whose tensors differ from `spec` raises ShapeError: flat vectors of the same
    length but another layout would otherwise be added to the wrong tensors. No updates raise
    NumericsError.
    """
    acc = FedAvgAccumulator()
    for u in updates:
        if spec_of(u.delta) != spec:
            raise ShapeError(f"update from client {u.client_id} does not match the model")
        acc.add(flatten(u.delta), u.num_examples)
    return acc.mean(np.float64)


class FedAvg(Strategy):
    """McMahan et al. 2017: the global model moves by the example-weighted mean delta."""

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """Global + server_lr * weighted mean of deltas."""
        step = self.server_lr * weighted_mean_delta(updates, spec_of(global_params))
        return add(global_params, unflatten(step.astype(np.float32), spec_of(global_params)))
