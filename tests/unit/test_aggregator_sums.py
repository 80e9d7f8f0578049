"""The aggregator's in-memory running sums and the records it buffers in Redis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federated.aggregate import FedAvgAccumulator, check_update
from federated.errors import NumericsError, PayloadError, ShapeError
from services.aggregator.sums import RunningSums
from services.runtime.store.aggregates import buffer_record, read_record


def _vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_a_device_is_folded_once_however_often_it_is_added() -> None:
    sums = RunningSums()
    sums.add("r", 0, "a", _vec(1, 2), 3)
    sums.add("r", 0, "a", _vec(100, 100), 3)
    sums.add("r", 0, "b", _vec(3, 4), 1)
    got = sums.get("r", 0)
    assert got.devices == {"a", "b"}
    assert got.acc.count == 2
    np.testing.assert_allclose(got.acc.mean(), [(3 + 3) / 4, (6 + 4) / 4])


def test_what_get_returns_is_a_copy() -> None:
    sums = RunningSums()
    sums.add("r", 0, "a", _vec(1), 1)
    copy = sums.get("r", 0)
    copy.acc.add(_vec(5), 1)
    copy.devices.add("b")
    again = sums.get("r", 0)
    assert (again.acc.count, again.devices) == (1, {"a"})
    np.testing.assert_allclose(again.acc.mean(), [1])


def test_iterations_and_rounds_are_kept_apart_and_dropped() -> None:
    sums = RunningSums()
    sums.add("r", 0, "a", _vec(1), 1)
    sums.add("r", 1, "a", _vec(2), 1)
    sums.add("s", 0, "a", _vec(3), 1)
    sums.drop("r", 0)
    assert sums.get("r", 0).acc.count == 0
    assert sums.get("r", 1).acc.count == 1
    sums.drop("r")
    assert sums.get("r", 1).acc.count == 0
    assert sums.get("s", 0).acc.count == 1


def test_memory_is_bounded_by_the_iterations_kept() -> None:
    sums = RunningSums(keep=2)
    for it in range(5):
        sums.add("r", it, "a", _vec(it), 1)
    assert [sums.get("r", it).acc.count for it in range(5)] == [0, 0, 0, 1, 1]


@given(st.integers(1, 2**63 - 1), st.binary(max_size=64))
def test_a_buffered_record_reads_back(weight: int, blob: bytes) -> None:
    assert read_record(buffer_record(weight, blob)) == (weight, blob)


def test_a_truncated_record_is_refused() -> None:
    with pytest.raises(PayloadError):
        read_record(b"\x01\x02")


def test_an_update_is_checked_before_it_is_buffered() -> None:
    check_update(_vec(1, 2), 1)
    with pytest.raises(NumericsError):
        check_update(_vec(1, float("nan")), 1)
    with pytest.raises(NumericsError):
        check_update(_vec(1), 0)
    with pytest.raises(ShapeError):
        check_update(np.ones((2, 2), np.float32), 1)
    acc = FedAvgAccumulator()
    with pytest.raises(NumericsError):
        acc.add(_vec(float("inf")), 1)
