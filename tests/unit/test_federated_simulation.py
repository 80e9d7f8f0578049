"""The in-memory harness: FedAvg learns, transforms are applied and byte counts add up."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from federated.errors import NumericsError
from federated.params import Params, digest, flatten
from federated.simulation import (
    digits_task,
    float32_downlink,
    float32_uplink,
    payload_downlink,
    payload_uplink,
    simulate,
)
from federated.strategy import FedAvg, Update


def test_fedavg_on_digits_learns_and_counts_float32_bytes() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    task = digits_task(20, 1.0, rng)

    # Execute
    result = simulate(
        task, iterations=10, clients_per_iteration=5, epochs=2, batch_size=16, lr=0.3, rng=rng
    )

    # Assert
    assert result.accuracy[-1] > 0.8
    params = 64 * 32 + 32 + 32 * 10 + 10
    assert result.mean_bytes() == (params * 4, params * 4)


@pytest.mark.parametrize("method", ["int8", "quant", None], ids=["int8", "quant8", "float32"])
def test_fedavg_over_payloads_learns_and_is_deterministic(method: str | None) -> None:
    # Prepare: models travel as real payloads both ways (or as plain float32).
    def run() -> tuple[list[float], str, tuple[float, float]]:
        rng = np.random.default_rng(2)
        plain = method is None
        uplink = float32_uplink if plain else payload_uplink(method=method)
        downlink = float32_downlink if plain else payload_downlink(method=method)
        result = simulate(
            digits_task(10, 0.5, rng),
            iterations=5,
            clients_per_iteration=10,
            epochs=2,
            batch_size=16,
            lr=0.2,
            rng=rng,
            uplink=uplink,
            downlink=downlink,
        )
        assert result.final is not None
        return result.accuracy, digest(result.final), result.mean_bytes()

    # Execute
    accuracy, final, (down, up) = run()
    again = run()
    # Assert: it learns, the same seed gives the same model, payloads shrink the bytes.
    assert accuracy[-1] > 0.8
    assert accuracy[-1] > accuracy[0]
    assert (accuracy, final) == again[:2]
    params = 64 * 32 + 32 + 32 * 10 + 10
    if method is not None:
        assert up < params * 4 / 3
        assert down < params * 4 / 3


def test_byzantine_clients_apply_their_attack_only() -> None:
    # Prepare: every client attacks with a huge delta; FedAvg follows it off a cliff
    rng = np.random.default_rng(1)
    task = digits_task(10, 1.0, rng)

    def attack(delta: Params, rng: np.random.Generator) -> Params:
        return {k: -1e3 * v for k, v in delta.items()}

    # Execute
    honest = simulate(
        task,
        iterations=3,
        clients_per_iteration=5,
        epochs=1,
        batch_size=16,
        lr=0.3,
        rng=np.random.default_rng(2),
    )
    attacked = simulate(
        task,
        iterations=3,
        clients_per_iteration=5,
        epochs=1,
        batch_size=16,
        lr=0.3,
        rng=np.random.default_rng(2),
        byzantine=range(10),
        attack=attack,
    )

    # Assert
    assert attacked.accuracy[-1] < honest.accuracy[-1] - 0.3


def test_fedavg_weights_by_examples() -> None:
    # Prepare
    g = {"w": np.zeros(2, np.float32)}
    updates = [
        Update({"w": np.array([1.0, 0.0], np.float32)}, 3),
        Update({"w": np.array([0.0, 1.0], np.float32)}, 1),
    ]

    # Execute
    out = FedAvg().aggregate(g, updates, np.random.default_rng(0))

    # Assert
    np.testing.assert_allclose(flatten(out), [0.75, 0.25])


class _Cohorts(FedAvg):
    """FedAvg that records how many updates each iteration brought."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        self.sizes.append(len(updates))
        return global_params if not updates else super().aggregate(global_params, updates, rng)


def _run(sampling: str, per_iteration: int, iterations: int = 40) -> list[int]:
    rng = np.random.default_rng(3)
    strategy = _Cohorts()
    simulate(
        digits_task(20, 0.5, rng),
        iterations=iterations,
        clients_per_iteration=per_iteration,
        epochs=1,
        batch_size=32,
        lr=0.1,
        rng=rng,
        strategy=strategy,
        sampling=sampling,  # type: ignore[arg-type]
    )
    return strategy.sizes


def test_fixed_sampling_takes_exactly_the_cohort() -> None:
    assert set(_run("fixed", 5)) == {5}


def test_poisson_sampling_varies_around_the_expected_cohort() -> None:
    # Prepare / Execute: 20 clients at q = 0.25, so Binomial(20, 0.25) per iteration
    sizes = _run("poisson", 5)
    # Assert: sizes vary, average near 5 (sd of the mean over 40 draws is about 0.31)
    assert len(set(sizes)) > 2
    assert abs(np.mean(sizes) - 5) < 1.5


def test_an_empty_poisson_cohort_reaches_the_strategy() -> None:
    # q = 1/20: P(empty) = 0.95^20 = 0.36, so 40 iterations see some empty cohorts.
    sizes = _run("poisson", 1)
    assert 0 in sizes


@pytest.mark.parametrize(
    ("sampling", "per_iteration"), [("uniform", 5), ("fixed", 0), ("fixed", 21)]
)
def test_bad_sampling_settings_raise(sampling: str, per_iteration: int) -> None:
    with pytest.raises(NumericsError):
        _run(sampling, per_iteration, iterations=1)
