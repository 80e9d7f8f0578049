"""Client-level differential privacy for FedAvg (DP-FedAvg, McMahan et al. 2018).

Each client's update is clipped to L2 norm C over all its tensors; the server sums the clipped
updates, Gaussian noise N(0, (z C)^2) lands on the sum, and the sum is divided by the *expected*
number of clients m. Two placements of the same noise:

- central (`CentralDP`): a trusted server clips, sums and adds all the noise;
- distributed (`DistributedDP`): each client clips and adds a share N(0, (z C)^2 / m), so the
  sum of m shares carries the central noise and the server adds none. The server needs only
  the sum of the updates, which is what secure aggregation reveals.

Why uniform weights, not FedAvg's example counts: the mechanism must bound how much one client
can move the output. With weights n_i the sum's sensitivity is max n_i C, unbounded and itself
private, and dividing by the realised total weight makes the denominator data-dependent. Giving
every client weight 1 and dividing by the fixed m (McMahan et al.'s "fixed-denominator"
estimator, with capped weights all equal to 1) keeps the sensitivity at exactly C.

Both wrappers turn the noisy mean delta into a single pseudo-update of weight 1 and hand it to
the wrapped strategy (FedAvg with a server learning rate, or a server optimizer); with None the
global model just moves by the noisy mean. Accounting is `federated.accountant`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from federated.errors import NumericsError, ShapeError
from federated.params import Params, add, clip_update, flatten, spec_of, unflatten
from federated.strategy import Strategy, Update

__all__ = [
    "CentralDP",
    "DistributedDP",
    "apply_mean_delta",
    "check_dp_config",
    "clipped_sum",
]


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise NumericsError(f"{name} must be positive and finite, got {value}")


def check_dp_config(
    strategy: Strategy | None, noise_multiplier: float, expected_clients: int
) -> None:
    """Raise NumericsError for settings no DP wrapper can run with."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise NumericsError(f"noise_multiplier must be >= 0 and finite, got {noise_multiplier}")
    if expected_clients < 1:
        raise NumericsError(f"expected_clients must be >= 1, got {expected_clients}")
    if strategy is not None and strategy.needs_all_updates:
        raise NumericsError("a DP wrapper hands one noisy mean on; a robust rule cannot use it")


def clipped_sum(updates: Sequence[Update], clip_norm: float, size: int) -> tuple[np.ndarray, int]:
    """Sum of the clipped flat updates (float64, `size` long) and how many were within C.

    No updates give zeros: under Poisson sampling an empty cohort still gets its noise.
    """
    total = np.zeros(size, dtype=np.float64)
    unclipped = 0
    for u in updates:
        clipped, was_clipped = clip_update(u.delta, clip_norm)
        unclipped += not was_clipped
        flat = flatten(clipped)
        if flat.shape != total.shape:
            raise ShapeError(f"update has {flat.size} elements, expected {size}")
        total += flat
    return total, unclipped


def apply_mean_delta(
    strategy: Strategy | None, global_params: Params, mean: np.ndarray, rng: np.random.Generator
) -> Params:
    """Move the global model by a (noisy) mean delta, through `strategy` if one is given."""
    delta = unflatten(mean.astype(np.float32), spec_of(global_params))
    if strategy is None:
        return add(global_params, delta)
    # One pseudo-update of weight 1: the inner rule sees exactly the DP mean as its delta.
    return strategy.aggregate(global_params, [Update(delta, 1)], rng)


class _GaussianDP(Strategy):
    """What both DP-FedAvg variants are configured with: the wrapped strategy, z, C and m."""

    def __init__(
        self,
        strategy: Strategy | None,
        *,
        noise_multiplier: float,
        clip_norm: float,
        expected_clients: int,
    ) -> None:
        check_dp_config(strategy, noise_multiplier, expected_clients)
        _check_positive("clip_norm", clip_norm)
        self.strategy = strategy
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.expected_clients = int(expected_clients)


class CentralDP(_GaussianDP):
    """Central DP-FedAvg: clip each update, add N(0, (z C)^2) to the sum, divide by m."""

    #: how many of the last iteration's updates were within the clip norm
    last_unclipped = 0

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on the sum: z C."""
        return self.noise_multiplier * self.clip_norm

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """Clip, sum, noise, divide by the expected number of clients, then delegate."""
        size = flatten(global_params).size
        total, self.last_unclipped = clipped_sum(updates, self.clip_norm, size)
        if self.noise_std > 0:
            total += rng.normal(0.0, self.noise_std, total.shape)
        return apply_mean_delta(self.strategy, global_params, total / self.expected_clients, rng)


class DistributedDP(_GaussianDP):
    """Distributed DP-FedAvg: clients clip and add a noise share; the server only sums.

    Use `client_uplink` as `simulate(uplink=...)` and the instance as its strategy. Each share
    has variance (z C)^2 / m, so m shares sum to the central noise; a single share is weak
    (multiplier z / sqrt(m)), so the guarantee needs the server to see only the sum (secure
    aggregation) and needs the m clients to report: with r < m the sum's multiplier is
    z sqrt(r / m), which `last_noise_multiplier` records for the accountant. It also trusts
    clients to add their share. Secure aggregation sums in a fixed-point ring; rounded
    continuous Gaussians are the usual approximation there (the exact route is the distributed
    discrete Gaussian of Kairouz et al. 2021).
    """

    def __init__(
        self,
        strategy: Strategy | None,
        *,
        noise_multiplier: float,
        clip_norm: float,
        expected_clients: int,
    ) -> None:
        super().__init__(
            strategy,
            noise_multiplier=noise_multiplier,
            clip_norm=clip_norm,
            expected_clients=expected_clients,
        )
        self.last_noise_multiplier = self.noise_multiplier

    @property
    def share_std(self) -> float:
        """Standard deviation of one client's noise share: z C / sqrt(m)."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.expected_clients)

    def client_share(self, delta: Params, rng: np.random.Generator) -> Params:
        """Device side: the clipped delta plus this client's share of the noise."""
        clipped, _ = clip_update(delta, self.clip_norm)
        if self.share_std == 0:
            return clipped
        return {
            k: (v.astype(np.float64) + rng.normal(0.0, self.share_std, v.shape)).astype(np.float32)
            for k, v in clipped.items()
        }

    def client_uplink(self, delta: Params, rng: np.random.Generator) -> tuple[Params, int]:
        """An `Uplink` for `simulate`: the noised share, sent as float32."""
        share = self.client_share(delta, rng)
        return share, int(flatten(share).size * 4)

    def aggregate_sum(
        self, global_params: Params, total: Params, received: int, rng: np.random.Generator
    ) -> Params:
        """Server side, from the sum alone (as secure aggregation reveals it): no clip, no noise."""
        if received < 1:
            raise NumericsError(f"need at least one share, got {received}")
        self.last_noise_multiplier = self.noise_multiplier * math.sqrt(
            min(received, self.expected_clients) / self.expected_clients
        )
        mean = flatten(total).astype(np.float64) / self.expected_clients
        return apply_mean_delta(self.strategy, global_params, mean, rng)

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """Sum the already clipped and noised shares; see `aggregate_sum`."""
        if not updates:
            raise NumericsError("no updates to aggregate")
        total = np.zeros(flatten(global_params).size, dtype=np.float64)
        for u in updates:
            flat = flatten(u.delta)
            if flat.shape != total.shape:
                raise ShapeError(f"update has {flat.size} elements, expected {total.size}")
            total += flat
        summed = unflatten(total, spec_of(global_params))
        return self.aggregate_sum(global_params, summed, len(updates), rng)
