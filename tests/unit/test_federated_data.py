"""Tests for federated.data: digits, splits, partitions and the centralized baseline."""

import subprocess
import sys

import numpy as np
import pytest

from federated import (
    NumericsError,
    dirichlet_partition,
    fleet_partition,
    load_digits,
    predict,
    train_centralized,
    train_holdout_split,
)


def test_load_digits_shapes_and_ranges() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 64)
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert x.min() == 0.0
    assert x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_load_digits_reads_what_scikit_learn_reads() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = load_digits()
    sk_x, sk_y = sklearn_digits(return_X_y=True)
    np.testing.assert_array_equal(x, (sk_x / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, sk_y)


def test_load_digits_does_not_import_scikit_learn() -> None:
    probe = "import sys; from federated.data import load_digits; load_digits(); "
    probe += "sys.exit('sklearn' in sys.modules or 'scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_holdout_split_is_stratified_and_disjoint() -> None:
    # Prepare
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    x = np.arange(y.size, dtype=np.float32)[:, None]
    # Execute
    x_tr, y_tr, x_ho, y_ho = train_holdout_split(
        x, y, holdout_fraction=0.2, rng=np.random.default_rng(0)
    )
    # Assert
    np.testing.assert_array_equal(np.bincount(y_ho), [20, 10, 6, 4])
    np.testing.assert_array_equal(np.bincount(y_tr), [80, 40, 24, 16])
    assert set(x_tr[:, 0]).isdisjoint(x_ho[:, 0])
    assert np.all(y[x_tr[:, 0].astype(int)] == y_tr)


def test_holdout_split_rejects_bad_fraction() -> None:
    with pytest.raises(NumericsError):
        train_holdout_split(
            np.zeros((4, 1)), np.zeros(4), holdout_fraction=1.0, rng=np.random.default_rng(0)
        )


def test_dirichlet_partition_covers_everything_once_with_min_size() -> None:
    # Prepare
    y = np.random.default_rng(0).integers(0, 10, size=1400)
    # Execute
    parts = dirichlet_partition(y, num_clients=30, alpha=0.5, rng=np.random.default_rng(1))
    # Assert
    assert len(parts) == 30
    everything = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(everything), np.arange(1400))
    assert min(p.size for p in parts) >= 10


def test_dirichlet_partition_is_deterministic_and_skewed() -> None:
    y = np.random.default_rng(0).integers(0, 10, size=1400)
    a = dirichlet_partition(y, num_clients=20, alpha=0.1, rng=np.random.default_rng(5))
    b = dirichlet_partition(y, num_clients=20, alpha=0.1, rng=np.random.default_rng(5))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    # With small alpha, a typical client is dominated by few labels.
    top_share = [np.bincount(y[p], minlength=10).max() / p.size for p in a]
    assert np.median(top_share) > 0.4


def test_dirichlet_partition_rejects_impossible_requests() -> None:
    y = np.zeros(50, dtype=int)
    with pytest.raises(NumericsError):
        dirichlet_partition(y, num_clients=10, alpha=0.5, rng=np.random.default_rng(0))
    with pytest.raises(NumericsError):
        dirichlet_partition(y, num_clients=2, alpha=0.0, rng=np.random.default_rng(0))


def _digits_setup() -> tuple[np.ndarray, ...]:
    x, y = load_digits()
    return train_holdout_split(x, y, holdout_fraction=0.2, rng=np.random.default_rng(0))


def test_centralized_baseline_learns_digits() -> None:
    x_tr, y_tr, x_ho, y_ho = _digits_setup()
    params = train_centralized(
        x_tr,
        y_tr,
        sizes=(64, 32, 10),
        epochs=10,
        batch_size=32,
        lr=0.1,
        rng=np.random.default_rng(0),
    )
    assert np.mean(predict(params, x_ho) == y_ho) > 0.9


@pytest.mark.parametrize("devices", [1, 30, 39, 40, 100, 1_000, 10_000])
def test_a_fleet_of_any_size_gets_data_from_the_digits(devices: int) -> None:
    # Prepare: the training part of the digits (1,437 examples)
    y = np.repeat(np.arange(10), 144)[:1437]

    # Execute
    parts = fleet_partition(y, devices=devices, alpha=0.1, rng=np.random.default_rng(3))

    # Assert: one part per device, never empty, within the data
    assert len(parts) == devices
    assert min(p.size for p in parts) >= 5
    assert all(p.max() < y.size for p in parts)


def test_a_small_fleet_keeps_its_own_parts_as_before() -> None:
    # A fleet the data can give ~36 examples each is split exactly as dirichlet_partition
    y = np.repeat(np.arange(10), 144)[:1437]
    ours = fleet_partition(y, devices=30, alpha=0.5, rng=np.random.default_rng(0))
    before = dirichlet_partition(y, num_clients=30, alpha=0.5, rng=np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(ours, before, strict=True))


def test_devices_sharing_a_part_see_it_in_their_own_order() -> None:
    # Execute: 1,000 devices over 39 parts
    y = np.repeat(np.arange(10), 144)[:1437]
    parts = fleet_partition(y, devices=1_000, alpha=0.5, rng=np.random.default_rng(0))
    again = fleet_partition(y, devices=1_000, alpha=0.5, rng=np.random.default_rng(0))

    # Assert: device 0 and device 39 hold the same examples in different orders; repeatable
    assert np.array_equal(np.sort(parts[0]), np.sort(parts[39]))
    assert not np.array_equal(parts[0], parts[39])
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
