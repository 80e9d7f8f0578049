"""A privacy budget for DP-FedAvg: Google's `dp_accounting` for the sampled Gaussian mechanism.

One iteration of DP-FedAvg is a sampled Gaussian mechanism on clients: each client takes part
with probability q and the clipped sum gets noise multiplier z. We compose T of them with
dp_accounting's RDP accountant (default) or its PLD accountant (tighter, slower) and convert
to (epsilon, delta) at the target delta. Before a round runs, `check` says whether it fits the
epsilon budget; `spend` refuses one that does not, leaving the state as it was.

Sampling: "poisson" (each client independently with probability q; the add/remove-one relation
of DP-FedAvg) or "fixed" (exactly m of N clients without replacement, as `simulate` samples;
dp_accounting analyses that only under replace-one, where one client's swap moves the clipped
sum by up to 2C, so the multiplier it sees is z / 2).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import dp_accounting
import numpy as np
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from federated.errors import BudgetExceeded, NumericsError

__all__ = ["BudgetExceeded", "PrivacyAccountant", "PrivacySpent"]

Method = Literal["rdp", "pld"]
Sampling = Literal["poisson", "fixed"]


@functools.lru_cache(maxsize=64)
def _rdp_per_round(
    event: dp_accounting.DpEvent, relation: dp_accounting.NeighboringRelation
) -> tuple[np.ndarray, np.ndarray]:
    """dp_accounting's RDP orders and one round's RDP curve (costly: cached per mechanism)."""
    acc = RdpAccountant(neighboring_relation=relation)
    acc.compose(event)
    orders, rdp = acc.orders, acc.rdp
    orders.setflags(write=False)
    rdp.setflags(write=False)
    return orders, rdp


@dataclass(frozen=True)
class PrivacySpent:
    """The guarantee after `rounds` rounds: (epsilon, delta)-DP at the client level."""

    epsilon: float
    delta: float
    rounds: int


class PrivacyAccountant:
    """Composes rounds of the sampled Gaussian mechanism and guards an epsilon budget."""

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sampling_rate: float,
        target_delta: float,
        epsilon_budget: float = math.inf,
        method: Method = "rdp",
        sampling: Sampling = "poisson",
        population: int | None = None,
    ) -> None:
        """Args:
        noise_multiplier: z, noise std on the clipped sum over the clip norm C.
        sampling_rate: q, the chance a client takes part (fixed: sample size / population).
        target_delta: the delta epsilon is reported at.
        epsilon_budget: rounds that would take epsilon above it are refused.
        method: "rdp" or "pld" accountant.
        sampling: "poisson" or "fixed" (the latter needs `population`, and method "rdp").
        population: number of clients N, for fixed-size sampling.
        """
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise NumericsError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if not 0 < sampling_rate <= 1:
            raise NumericsError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
        if not 0 < target_delta < 1:
            raise NumericsError(f"target_delta must be in (0, 1), got {target_delta}")
        if not epsilon_budget > 0:
            raise NumericsError(f"epsilon_budget must be positive, got {epsilon_budget}")
        if method not in ("rdp", "pld") or sampling not in ("poisson", "fixed"):
            raise NumericsError(f"unknown method {method!r} or sampling {sampling!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        self.target_delta = float(target_delta)
        self.epsilon_budget = float(epsilon_budget)
        self.method: Method = method
        self.sampling: Sampling = sampling
        self._relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        self.event: dp_accounting.DpEvent
        if sampling == "poisson":
            gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
            self.event = dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        else:
            if population is None or population < 1 or method != "rdp":
                raise NumericsError("fixed-size sampling needs a population and method 'rdp'")
            sample = round(self.sampling_rate * population)
            if not 1 <= sample <= population:
                raise NumericsError(f"q={sampling_rate} of {population} is no sample size")
            self._relation = dp_accounting.NeighboringRelation.REPLACE_ONE
            gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier / 2)
            self.event = dp_accounting.SampledWithoutReplacementDpEvent(
                population, sample, gaussian
            )
        self._rounds = 0
        self._cache: dict[int, float] = {0: 0.0}

    @property
    def rounds(self) -> int:
        """Rounds spent so far."""
        return self._rounds

    @property
    def epsilon(self) -> float:
        """Epsilon at `target_delta` after the rounds spent so far."""
        return self.epsilon_after(self._rounds)

    @property
    def spent(self) -> PrivacySpent:
        """(epsilon, delta) after the rounds spent so far."""
        return PrivacySpent(self.epsilon, self.target_delta, self._rounds)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon at `target_delta` after `rounds` rounds in total (spent or not)."""
        if rounds < 0:
            raise NumericsError(f"rounds must be >= 0, got {rounds}")
        if rounds in self._cache:
            return self._cache[rounds]
        if self.noise_multiplier == 0:
            eps = math.inf
        elif self.method == "rdp":
            # RDP composes by addition: one round's curve, scaled, is what compose(event, T)
            # computes; this keeps a per-round check cheap for thousands of rounds.
            orders, per_round = _rdp_per_round(self.event, self._relation)
            curve = rounds * per_round  # a new array: the cached one is never changed
            eps = float(compute_epsilon(orders, curve, self.target_delta)[0])
        else:
            pld = PLDAccountant(self._relation).compose(self.event, rounds)
            eps = float(pld.get_epsilon(self.target_delta))
        self._cache[rounds] = eps
        return eps

    def check(self, rounds: int = 1) -> float:
        """Epsilon after `rounds` more rounds; BudgetExceeded if that is over the budget."""
        if rounds < 1:
            raise NumericsError(f"rounds must be >= 1, got {rounds}")
        eps = self.epsilon_after(self._rounds + rounds)
        if not eps <= self.epsilon_budget:
            raise BudgetExceeded(eps, self.epsilon_budget, self._rounds + rounds)
        return eps

    def spend(self, rounds: int = 1) -> PrivacySpent:
        """Record `rounds` more rounds if they fit the budget, else raise and change nothing."""
        self.check(rounds)
        self._rounds += rounds
        return self.spent

    def max_rounds(self, limit: int = 1_000_000) -> int:
        """The most rounds in total the budget allows (capped at `limit`)."""
        if self.epsilon_after(1) > self.epsilon_budget:
            return 0
        lo, hi = 1, 2
        while hi <= limit and self.epsilon_after(hi) <= self.epsilon_budget:
            lo, hi = hi, hi * 2
        if hi > limit:
            if self.epsilon_after(limit) <= self.epsilon_budget:
                return limit
            hi = limit
        while hi - lo > 1:  # invariant: lo fits, hi does not
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.epsilon_after(mid) <= self.epsilon_budget else (lo, mid)
        return lo
