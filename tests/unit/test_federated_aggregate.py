"""Tests for federated.aggregate: the streaming weighted mean and its byte form."""

from collections.abc import Callable

import numpy as np
import pytest

from federated import (
    FedAvgAccumulator,
    NumericsError,
    PayloadError,
    ShapeError,
    flatten,
)


def _results(n: int, seed: int = 0) -> list[tuple[dict[str, np.ndarray], int]]:
    rng = np.random.default_rng(seed)
    return [
        (
            {
                "w0": rng.standard_normal((4, 3)).astype(np.float32),
                "b0": rng.standard_normal(3).astype(np.float32),
            },
            int(rng.integers(1, 100)),
        )
        for _ in range(n)
    ]


def test_mean_weights_by_examples() -> None:
    # Prepare
    acc = FedAvgAccumulator()
    # Execute
    acc.add(np.array([0.0, 2.0], dtype=np.float32), 1)
    acc.add(np.array([4.0, 6.0], dtype=np.float32), 3)
    # Assert
    np.testing.assert_array_equal(acc.mean(), [3.0, 5.0])
    assert acc.mean().dtype == np.float32
    assert acc.mean(np.float64).dtype == np.float64


def test_streaming_matches_a_reference_weighted_mean() -> None:
    # Prepare
    results = _results(25)
    acc = FedAvgAccumulator()
    # Execute
    for params, n in results:
        acc.add(flatten(params), n)
    # Assert
    rows = np.stack([flatten(p).astype(np.float64) for p, _ in results])
    reference = np.average(rows, axis=0, weights=[n for _, n in results])
    assert acc.count == 25
    assert acc.total_weight == sum(n for _, n in results)
    np.testing.assert_allclose(acc.mean(np.float64), reference, rtol=1e-12)


def test_streaming_through_bytes_matches_in_memory() -> None:
    # Prepare: the running sum survives a round trip through bytes (Redis) after every update.
    results = _results(10, seed=1)
    in_memory = FedAvgAccumulator()
    blob = FedAvgAccumulator().to_bytes()
    # Execute
    for params, n in results:
        in_memory.add(flatten(params), n)
        stored = FedAvgAccumulator.from_bytes(blob)
        stored.add(flatten(params), n)
        blob = stored.to_bytes()
    restored = FedAvgAccumulator.from_bytes(blob)
    # Assert
    np.testing.assert_array_equal(restored.mean(), in_memory.mean())
    assert restored.count == in_memory.count
    assert restored.total_weight == in_memory.total_weight
    assert len(blob) == 29 + 8 * 15  # fixed header + one float64 per parameter


def test_empty_accumulator_roundtrips_and_has_no_mean() -> None:
    restored = FedAvgAccumulator.from_bytes(FedAvgAccumulator().to_bytes())
    assert restored.weighted_sum is None
    assert restored.count == 0
    with pytest.raises(NumericsError):
        restored.mean()


def test_add_rejects_bad_updates_without_changing_state() -> None:
    # Prepare
    acc = FedAvgAccumulator()
    acc.add(np.ones(4, dtype=np.float32), 2)
    before = acc.to_bytes()
    # Execute / Assert
    with pytest.raises(ShapeError):
        acc.add(np.ones(5, dtype=np.float32), 2)
    with pytest.raises(ShapeError):
        acc.add(np.ones((2, 2), dtype=np.float32), 2)
    with pytest.raises(NumericsError):
        acc.add(np.array([1.0, np.inf, 0.0, 0.0], dtype=np.float32), 2)
    with pytest.raises(NumericsError):
        acc.add(np.ones(4, dtype=np.float32), 0)
    with pytest.raises(NumericsError):
        acc.add(np.ones(4, dtype=np.float32), -3)
    assert acc.to_bytes() == before


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00" * 8,
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:10],
        lambda b: b[:-8] + np.array([np.nan]).tobytes(),
        lambda b: b"",
    ],
)
def test_from_bytes_rejects_corruption(mutate: Callable[[bytes], bytes]) -> None:
    acc = FedAvgAccumulator()
    acc.add(np.arange(4, dtype=np.float32), 3)
    with pytest.raises(PayloadError):
        FedAvgAccumulator.from_bytes(mutate(acc.to_bytes()))
