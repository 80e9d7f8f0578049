"""The privacy accountant against dp_accounting itself, its monotonicity and its refusals."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from federated.accountant import BudgetExceeded, PrivacyAccountant
from federated.errors import NumericsError

# (sampling rate, noise multiplier, rounds, delta)
SETTINGS = [
    (0.1, 1.0, 50, 1e-5),
    (0.01, 1.1, 1000, 1e-5),
    (0.05, 0.8, 200, 1e-6),
    (1.0, 5.0, 10, 1e-5),
    (0.3, 2.0, 30, 1e-3),
]


def _poisson(q: float, z: float) -> dp_accounting.DpEvent:
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))


@pytest.mark.parametrize(("q", "z", "rounds", "delta"), SETTINGS)
def test_rdp_epsilon_matches_dp_accounting(q: float, z: float, rounds: int, delta: float) -> None:
    # Prepare
    acc = PrivacyAccountant(noise_multiplier=z, sampling_rate=q, target_delta=delta)
    direct = RdpAccountant().compose(_poisson(q, z), rounds).get_epsilon(delta)

    # Execute
    spent = acc.spend(rounds)

    # Assert
    assert spent.epsilon == pytest.approx(direct, rel=1e-9)
    assert (spent.delta, spent.rounds) == (delta, rounds)
    assert acc.epsilon == spent.epsilon


@pytest.mark.parametrize(("q", "z", "rounds", "delta"), SETTINGS[:2])
def test_pld_epsilon_matches_dp_accounting(q: float, z: float, rounds: int, delta: float) -> None:
    # Prepare
    acc = PrivacyAccountant(noise_multiplier=z, sampling_rate=q, target_delta=delta, method="pld")
    direct = PLDAccountant().compose(_poisson(q, z), rounds).get_epsilon(delta)

    # Execute
    spent = acc.spend(rounds)

    # Assert: PLD is tighter than RDP for the same mechanism
    assert spent.epsilon == pytest.approx(direct, rel=1e-9)
    rdp = PrivacyAccountant(noise_multiplier=z, sampling_rate=q, target_delta=delta)
    assert spent.epsilon < rdp.epsilon_after(rounds)


def test_fixed_size_sampling_matches_dp_accounting_replace_one() -> None:
    # Prepare: 100 of 1000 clients without replacement; a swap moves the sum by 2C
    acc = PrivacyAccountant(
        noise_multiplier=1.0,
        sampling_rate=0.1,
        target_delta=1e-5,
        sampling="fixed",
        population=1000,
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        1000, 100, dp_accounting.GaussianDpEvent(0.5)
    )
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    direct = RdpAccountant(neighboring_relation=relation).compose(event, 20).get_epsilon(1e-5)

    # Execute / Assert
    assert acc.spend(20).epsilon == pytest.approx(direct, rel=1e-9)


def test_epsilon_after_each_round_matches_and_grows() -> None:
    # Prepare
    acc = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.1, target_delta=1e-5)
    direct = RdpAccountant()

    # Execute / Assert: one round at a time, as a training loop would
    previous = 0.0
    for _ in range(8):
        spent = acc.spend()
        direct.compose(_poisson(0.1, 1.0))
        assert spent.epsilon == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
        assert spent.epsilon > previous
        previous = spent.epsilon


def test_epsilon_is_monotone_in_noise_sampling_and_delta() -> None:
    def eps(z: float = 1.0, q: float = 0.1, delta: float = 1e-5) -> float:
        acc = PrivacyAccountant(noise_multiplier=z, sampling_rate=q, target_delta=delta)
        return acc.epsilon_after(100)

    assert eps(z=0.8) > eps(z=1.0) > eps(z=2.0)
    assert eps(q=0.2) > eps(q=0.1) > eps(q=0.01)
    assert eps(delta=1e-7) > eps(delta=1e-5) > eps(delta=1e-3)


def test_spend_refuses_a_round_over_budget_and_changes_nothing() -> None:
    # Prepare: a budget between the epsilons after 10 and 11 rounds
    probe = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.1, target_delta=1e-5)
    budget = (probe.epsilon_after(10) + probe.epsilon_after(11)) / 2
    acc = PrivacyAccountant(
        noise_multiplier=1.0, sampling_rate=0.1, target_delta=1e-5, epsilon_budget=budget
    )

    # Execute
    acc.spend(10)
    before = acc.spent
    with pytest.raises(BudgetExceeded) as refused:
        acc.spend()

    # Assert
    assert isinstance(refused.value, NumericsError)
    assert refused.value.budget == budget
    assert refused.value.epsilon == pytest.approx(probe.epsilon_after(11))
    assert refused.value.rounds == 11
    assert acc.spent == before
    with pytest.raises(BudgetExceeded):
        acc.check(5)
    assert acc.rounds == 10
    assert acc.max_rounds() == 10


def test_max_rounds_is_the_last_round_that_fits() -> None:
    # Prepare
    acc = PrivacyAccountant(
        noise_multiplier=1.0, sampling_rate=0.05, target_delta=1e-5, epsilon_budget=3.0
    )

    # Execute
    n = acc.max_rounds()

    # Assert
    assert acc.epsilon_after(n) <= 3.0 < acc.epsilon_after(n + 1)
    assert acc.spend(n).rounds == n


def test_no_noise_means_infinite_epsilon() -> None:
    acc = PrivacyAccountant(
        noise_multiplier=0.0, sampling_rate=0.1, target_delta=1e-5, epsilon_budget=10.0
    )
    assert acc.epsilon == 0.0
    assert math.isinf(acc.epsilon_after(1))
    with pytest.raises(BudgetExceeded):
        acc.spend()
    assert acc.max_rounds() == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": -1.0},
        {"sampling_rate": 0.0},
        {"sampling_rate": 1.5},
        {"target_delta": 0.0},
        {"epsilon_budget": 0.0},
        {"sampling": "fixed"},
        {"sampling": "fixed", "population": 1000, "method": "pld"},
    ],
)
def test_rejects_bad_configuration(kwargs: dict[str, object]) -> None:
    config: dict[str, object] = {
        "noise_multiplier": 1.0,
        "sampling_rate": 0.1,
        "target_delta": 1e-5,
    }
    config.update(kwargs)
    with pytest.raises(NumericsError):
        PrivacyAccountant(**config)  # type: ignore[arg-type]
