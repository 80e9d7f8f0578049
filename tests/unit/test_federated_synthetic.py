"""Synthetic(alpha, beta): shapes, determinism and heterogeneity."""

from __future__ import annotations

import numpy as np
import pytest

from federated.errors import NumericsError
from federated.simulation import ClientData
from federated.synthetic import synthetic_clients, synthetic_task


def _label_entropy(clients: list[ClientData]) -> float:
    """Mean entropy (nats) of each client's label distribution: lower is more skewed."""
    out = []
    for c in clients:
        p = np.bincount(c.y, minlength=10) / c.y.size
        p = p[p > 0]
        out.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(out))


def _feature_mean_spread(clients: list[ClientData]) -> float:
    """Std over clients of each client's mean feature value."""
    return float(np.std([c.x.mean() for c in clients]))


def test_shapes_and_sizes() -> None:
    # Execute
    clients = synthetic_clients(1.0, 1.0, 30, np.random.default_rng(0))

    # Assert
    assert len(clients) == 30
    for c in clients:
        assert c.x.dtype == np.float32
        assert c.y.dtype == np.int64
        assert c.x.shape == (c.y.size, 60)
        assert c.y.size >= 50
        assert c.y.min() >= 0
        assert c.y.max() < 10


def test_task_holds_out_a_fifth_of_every_client() -> None:
    # Prepare
    full = synthetic_clients(0.5, 0.5, 25, np.random.default_rng(1))

    # Execute
    task = synthetic_task(0.5, 0.5, 25, np.random.default_rng(1))

    # Assert: the same draws, 80% kept per client, the 20%s pooled for the test set
    assert task.sizes == (60, 10)
    assert task.x_test.shape == (task.y_test.size, 60)
    for whole, kept in zip(full, task.clients, strict=True):
        assert kept.y.size == whole.y.size - round(0.2 * whole.y.size)
    assert sum(c.y.size for c in task.clients) + task.y_test.size == sum(c.y.size for c in full)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = synthetic_task(1.0, 1.0, 10, np.random.default_rng(7))
    b = synthetic_task(1.0, 1.0, 10, np.random.default_rng(7))
    c = synthetic_task(1.0, 1.0, 10, np.random.default_rng(8))
    for x, y in zip(a.clients, b.clients, strict=True):
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.y, y.y)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.clients[0].x[:10], c.clients[0].x[:10])


def test_heterogeneity_grows_with_beta() -> None:
    # Prepare / Execute: same seeds, increasing beta
    spreads, entropies = [], []
    for beta in (0.0, 1.0, 3.0):
        clients = synthetic_clients(1.0, beta, 300, np.random.default_rng(2), max_size=300)
        spreads.append(_feature_mean_spread(clients))
        entropies.append(_label_entropy(clients))

    # Assert: client feature means spread out, and each client's labels concentrate
    assert spreads[0] < spreads[1] < spreads[2]
    assert entropies[0] > entropies[1] > entropies[2]


def test_alpha_cancels_in_the_argmax() -> None:
    # The mean u_k is added to every class's weights and bias, so it shifts every logit by the
    # same amount: for one seed, the data do not depend on alpha (see the module docstring).
    low = synthetic_clients(0.0, 1.0, 40, np.random.default_rng(3))
    high = synthetic_clients(1.0, 1.0, 40, np.random.default_rng(3))
    agree = np.concatenate([a.y == b.y for a, b in zip(low, high, strict=True)])
    assert all(np.array_equal(a.x, b.x) for a, b in zip(low, high, strict=True))
    assert agree.mean() > 0.999


def test_max_size_caps_clients() -> None:
    clients = synthetic_clients(1.0, 1.0, 200, np.random.default_rng(4), max_size=120)
    assert max(c.y.size for c in clients) == 120


@pytest.mark.parametrize(
    ("alpha", "beta", "n", "max_size"),
    [(-1.0, 1.0, 5, None), (1.0, -1.0, 5, None), (1.0, 1.0, 0, None), (1.0, 1.0, 5, 0)],
)
def test_rejects_bad_arguments(alpha: float, beta: float, n: int, max_size: int | None) -> None:
    with pytest.raises(NumericsError):
        synthetic_clients(alpha, beta, n, np.random.default_rng(0), max_size=max_size)
