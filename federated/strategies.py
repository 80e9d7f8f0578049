"""Server optimizers on the pseudo-gradient: FedAvgM, FedAdam and FedYogi.

Each iteration's pseudo-gradient is the example-weighted mean delta Δ of the updates, streamed
(memory O(model), whatever the number of updates). The optimizer keeps its state (moments) on
the instance across calls, so use one instance per model and run. With server learning rate η::

    FedAvgM  m <- mu*m + Δ                                x <- x + η*m            (Hsu et al. 2019)
    FedAdam  m <- b1*m + (1-b1)*Δ;  v <- b2*v + (1-b2)*Δ²          x <- x + η*m/(sqrt(v) + tau)
    FedYogi  m as FedAdam;          v <- v - (1-b2)*Δ²*sign(v - Δ²) x as FedAdam

FedAdam and FedYogi follow Algorithm 2 of Reddi et al. 2021, "Adaptive Federated
Optimization": no bias correction, and v starts at tau² (the paper asks for v_{-1} >= tau²;
Flower starts it at 0 and, for FedAdam, bias-corrects η). State is float64.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np

from federated.errors import NumericsError, ShapeError
from federated.params import Params, ParamSpec, add, spec_of, unflatten
from federated.strategy import Strategy, Update, weighted_mean_delta

__all__ = ["FedAdam", "FedAvgM", "FedYogi", "ServerOptimizer"]


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise NumericsError(f"{name} must be in [0, 1), got {value}")


class ServerOptimizer(Strategy):
    """A stateful server step on the pseudo-gradient; subclasses define `_step`."""

    def __init__(self, server_lr: float) -> None:
        if not server_lr > 0:
            raise NumericsError(f"server_lr must be positive, got {server_lr}")
        self.server_lr = server_lr
        self.iterations = 0
        self._spec: ParamSpec | None = None

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """Advance the optimizer state by one pseudo-gradient and apply the step."""
        spec = spec_of(global_params)
        if self._spec is not None and spec != self._spec:
            raise ShapeError("model spec changed between iterations; use a fresh optimizer")
        delta = weighted_mean_delta(updates, spec_of(global_params))
        if self._spec is None:
            self._spec = spec
            self._init_state(delta.size)
        step = self._step(delta)
        self.iterations += 1
        return add(global_params, unflatten(step.astype(np.float32), spec))

    def reset(self) -> None:
        """Forget all state, as if no iteration had run."""
        self.iterations = 0
        self._spec = None

    @abstractmethod
    def _init_state(self, size: int) -> None:
        """Allocate the state for a model of `size` parameters."""

    @abstractmethod
    def _step(self, delta: np.ndarray) -> np.ndarray:
        """Update the state with pseudo-gradient `delta`; return the flat step to add."""


class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum (Hsu et al. 2019); momentum 0 and server_lr 1 is FedAvg."""

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(server_lr)
        _check_unit_interval("momentum", momentum)
        self.momentum = momentum
        self.velocity = np.zeros(0)  # sized at the first iteration

    def reset(self) -> None:
        """Forget the velocity."""
        super().reset()
        self.velocity = np.zeros(0)

    def _init_state(self, size: int) -> None:
        self.velocity = np.zeros(size)

    def _step(self, delta: np.ndarray) -> np.ndarray:
        self.velocity = self.momentum * self.velocity + delta
        return self.server_lr * self.velocity


class _AdaptiveOptimizer(ServerOptimizer):
    """Adam-family server optimizer (Reddi et al. 2021): first moment m, second moment v."""

    def __init__(
        self,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(server_lr)
        _check_unit_interval("beta1", beta1)
        _check_unit_interval("beta2", beta2)
        if not tau > 0:
            raise NumericsError(f"tau must be positive, got {tau}")
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m = np.zeros(0)  # both sized at the first iteration
        self.v = np.zeros(0)

    def reset(self) -> None:
        """Forget both moments."""
        super().reset()
        self.m, self.v = np.zeros(0), np.zeros(0)

    def _init_state(self, size: int) -> None:
        self.m = np.zeros(size)
        self.v = np.full(size, self.tau**2)

    def _step(self, delta: np.ndarray) -> np.ndarray:
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * delta
        self.v = self._second_moment(self.v, delta * delta)
        return self.server_lr * self.m / (np.sqrt(self.v) + self.tau)

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Return the next v given the squared pseudo-gradient."""


class FedAdam(_AdaptiveOptimizer):
    """Adam on the server: v is an exponential moving average of Δ²."""

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq


class FedYogi(_AdaptiveOptimizer):
    """Yogi on the server: v moves towards Δ² by an additive, sign-controlled step."""

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        # Yogi's additive update keeps v from shrinking fast when Δ² drops (Zaheer et al. 2018).
        return v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)
