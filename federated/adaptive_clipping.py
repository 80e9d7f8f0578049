"""Adaptive clipping for DP-FedAvg (Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping").

Instead of a fixed clip norm C, the server tracks a target quantile gamma of the update norms:
each client reports the bit b_i = [||delta_i|| <= C]; the server forms the noised fraction
b~ = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2 and moves C geometrically,
C <- C exp(-eta (b~ - gamma)). The bits are centred so each client moves the count by 1/2.

The count is a second Gaussian query on the same clients, so it shares the privacy budget:
for an overall noise multiplier z, the update sum gets z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2
(the paper's Theorem 1), and the accountant is run with z. The noise on this iteration's sum
is scaled to the C used to clip it; C changes only afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated.errors import NumericsError
from federated.params import Params, flatten
from federated.privacy import apply_mean_delta, check_dp_config, clipped_sum
from federated.strategy import Strategy, Update

__all__ = ["AdaptiveClip", "AdaptiveClipDP", "update_noise_multiplier"]


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Noise multiplier left for the update sum once the count takes its share."""
    if noise_multiplier == 0:
        return 0.0
    if not 2 * count_stddev > noise_multiplier:
        raise NumericsError(
            f"count_stddev {count_stddev} too small for noise multiplier {noise_multiplier}:"
            " need 2 * count_stddev > noise_multiplier"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


@dataclass
class AdaptiveClip:
    """The clip norm and its geometric update toward a target quantile of update norms."""

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise NumericsError(f"clip_norm must be positive, got {self.clip_norm}")
        if not 0.0 <= self.target_quantile <= 1.0:
            raise NumericsError(f"target_quantile must be in [0, 1], got {self.target_quantile}")
        if not self.learning_rate > 0 or not self.count_stddev >= 0:
            raise NumericsError(
                f"invalid learning_rate {self.learning_rate} or count_stddev {self.count_stddev}"
            )

    def noised_fraction(
        self, unclipped: int, received: int, expected_clients: int, rng: np.random.Generator
    ) -> float:
        """The DP estimate of the fraction of updates within the clip norm."""
        centred = unclipped - received / 2
        if self.count_stddev > 0:
            centred += float(rng.normal(0.0, self.count_stddev))
        return centred / expected_clients + 0.5

    def update(
        self, unclipped: int, received: int, expected_clients: int, rng: np.random.Generator
    ) -> float:
        """Move the clip norm after one iteration; return the new value."""
        fraction = self.noised_fraction(unclipped, received, expected_clients, rng)
        self.clip_norm *= math.exp(-self.learning_rate * (fraction - self.target_quantile))
        return self.clip_norm


class AdaptiveClipDP(Strategy):
    """Central DP-FedAvg whose clip norm follows a quantile of the update norms."""

    def __init__(
        self,
        strategy: Strategy | None,
        *,
        noise_multiplier: float,
        expected_clients: int,
        initial_clip_norm: float = 0.1,
        target_quantile: float = 0.5,
        clip_learning_rate: float = 0.2,
        count_stddev: float | None = None,
    ) -> None:
        """Args mirror the paper; count_stddev defaults to its m / 20."""
        check_dp_config(strategy, noise_multiplier, expected_clients)
        if count_stddev is None:
            count_stddev = expected_clients / 20 if noise_multiplier > 0 else 0.0
        self.strategy = strategy
        #: the overall multiplier, the one to give the accountant
        self.noise_multiplier = float(noise_multiplier)
        self.update_noise_multiplier = update_noise_multiplier(noise_multiplier, count_stddev)
        self.expected_clients = int(expected_clients)
        self.clip = AdaptiveClip(
            initial_clip_norm, target_quantile, clip_learning_rate, float(count_stddev)
        )
        #: clip norm used in each iteration so far
        self.history: list[float] = []

    @property
    def clip_norm(self) -> float:
        """The clip norm the next iteration will use."""
        return self.clip.clip_norm

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """Clip with the current C, noise the sum for that C, then adapt C."""
        clip_norm = self.clip.clip_norm
        total, unclipped = clipped_sum(updates, clip_norm, flatten(global_params).size)
        std = self.update_noise_multiplier * clip_norm
        if std > 0:
            total += rng.normal(0.0, std, total.shape)
        self.history.append(clip_norm)
        self.clip.update(unclipped, len(updates), self.expected_clients, rng)
        return apply_mean_delta(self.strategy, global_params, total / self.expected_clients, rng)
