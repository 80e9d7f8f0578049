"""The in-memory harness: FedAvg learns, transforms are applied and byte counts add up."""

from __future__ import annotations

import numpy as np

from federated.params import Params, flatten
from federated.simulation import digits_task, simulate
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
