"""Tests for federated.compression: int8 block quantization with stochastic rounding."""

import numpy as np
import pytest

from federated import NumericsError, ShapeError, dequantize_int8, quantize_int8


def test_shapes_scales_and_zero_blocks() -> None:
    # Prepare: 10 elements in blocks of 4; the middle block is all zeros.
    x = np.array([1.0, -2.0, 0.5, 0.0, 0, 0, 0, 0, 3.0, -1.0], dtype=np.float32)
    # Execute
    q, scales = quantize_int8(x, block=4, rng=np.random.default_rng(0))
    # Assert
    assert q.dtype == np.int8
    assert q.shape == (10,)
    assert scales.dtype == np.float32
    np.testing.assert_allclose(scales, [2.0 / 127, 0.0, 3.0 / 127], rtol=1e-7)
    assert not q[4:8].any()
    # The largest element of a block is represented exactly.
    assert q[1] == -127
    assert q[8] == 127


def test_error_is_below_one_scale() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(10_000) * rng.uniform(0.001, 10, size=10_000)).astype(np.float32)
    # Execute
    q, scales = quantize_int8(x, block=256, rng=rng)
    deq = dequantize_int8(q, scales, block=256)
    # Assert
    per_element = np.repeat(scales, 256)[: x.size].astype(np.float64)
    err = np.abs(x.astype(np.float64) - deq.astype(np.float64))
    assert np.all(err <= per_element * (1 + 1e-6))
    assert np.abs(q.astype(int)).max() <= 127


def test_stochastic_rounding_is_unbiased() -> None:
    # Prepare
    rng = np.random.default_rng(2)
    x = rng.standard_normal(64).astype(np.float32)
    trials = 4000
    # Execute
    total = np.zeros(64)
    for _ in range(trials):
        q, scales = quantize_int8(x, block=16, rng=rng)
        total += dequantize_int8(q, scales, block=16)
    mean = total / trials
    # Assert: each rounding error has |e| < scale, so sd(mean) <= scale / 2 / sqrt(trials).
    scale = np.repeat(np.abs(x.reshape(4, 16)).max(axis=1) / 127, 16)
    z = np.abs(mean - x) / (scale / 2 / np.sqrt(trials))
    assert z.max() < 5


def test_empty_vector() -> None:
    q, scales = quantize_int8(np.zeros(0, dtype=np.float32), block=8, rng=np.random.default_rng(0))
    assert q.size == 0
    assert scales.size == 0
    assert dequantize_int8(q, scales, block=8).size == 0


def test_rejects_bad_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(NumericsError):
        quantize_int8(np.array([1.0, np.nan], dtype=np.float32), block=4, rng=rng)
    with pytest.raises(ShapeError):
        quantize_int8(np.ones((2, 2), dtype=np.float32), block=4, rng=rng)
    with pytest.raises(NumericsError):
        quantize_int8(np.ones(4, dtype=np.float32), block=0, rng=rng)
    with pytest.raises(ShapeError):
        dequantize_int8(np.zeros(10, dtype=np.int8), np.ones(2, dtype=np.float32), block=4)
