"""Tests for federated.compression: 8/4/2-bit block quantization (stochastic rounding), packing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federated import NumericsError, ShapeError, dequantize_int8, quantize_int8
from federated.compression import (
    dequantize,
    pack_codes,
    packed_size,
    qmax,
    quantize,
    unpack_codes,
)


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


# --- 8, 4 and 2 bits (`quantize` / `dequantize`) and bit packing --------------------------

_BOUNDED = settings(max_examples=200, deadline=None, database=None)
_finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@pytest.mark.parametrize(("bits", "top"), [(8, 127), (4, 7), (2, 1)])
def test_quantize_codes_scales_and_exact_extremes(bits: int, top: int) -> None:
    # Prepare: two blocks of 4; the second is all zeros.
    x = np.array([1.0, -3.0, 0.5, 0.0, 0, 0, 0, 0], dtype=np.float32)
    # Execute
    q, scales = quantize(x, bits=bits, block=4, rng=np.random.default_rng(0))
    # Assert
    assert qmax(bits) == top
    assert q.dtype == np.int8
    np.testing.assert_allclose(scales, [3.0 / top, 0.0], rtol=1e-7)
    assert q[1] == -top  # the largest magnitude of a block is exact
    assert q[3] == 0  # zero is exact
    assert not q[4:].any()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantize_is_unbiased(bits: int) -> None:
    # Prepare: values spread over each block's range, including the awkward middle ones.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(64) * rng.uniform(0.01, 3, size=64)).astype(np.float32)
    trials = 4000
    # Execute
    total = np.zeros(64)
    for _ in range(trials):
        q, scales = quantize(x, bits=bits, block=16, rng=rng)
        total += dequantize(q, scales, block=16)
    mean = total / trials
    # Assert: each rounding error lies in (-scale, scale), so sd(mean) <= scale / 2 / sqrt(n).
    scale = np.repeat(np.abs(x.reshape(4, 16)).max(axis=1) / qmax(bits), 16)
    z = np.abs(mean - x) / (scale / 2 / np.sqrt(trials))
    assert z.max() < 5
    # ... and the 2-bit rounding really is random (not a deterministic round to nearest).
    assert np.abs(mean - x).max() < scale.max() / 20


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantize_error_variance_matches_stochastic_rounding(bits: int) -> None:
    # Prepare: for x = (k + f) * s the rounding error has variance f (1 - f) s^2.
    rng = np.random.default_rng(3)
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    trials = 3000
    # Execute
    errs = np.stack(
        [
            dequantize(*quantize(x, bits=bits, block=64, rng=rng), block=64) - x
            for _ in range(trials)
        ]
    )
    # Assert
    scale = 1.0 / qmax(bits)
    frac = (x / scale) - np.floor(x / scale)
    np.testing.assert_allclose(errs.var(axis=0), frac * (1 - frac) * scale**2, atol=0.02 * scale**2)


@_BOUNDED
@given(
    hnp.arrays(np.float32, st.integers(0, 300), elements=_finite),
    st.sampled_from([8, 4, 2]),
    st.integers(1, 70),
    st.integers(0, 2**32 - 1),
)
def test_quantize_error_is_below_one_scale(x: np.ndarray, bits: int, block: int, seed: int) -> None:
    # Execute
    q, scales = quantize(x, bits=bits, block=block, rng=np.random.default_rng(seed))
    deq = dequantize(q, scales, block=block)
    # Assert
    assert np.abs(q.astype(int)).max(initial=0) <= qmax(bits)
    per_element = np.repeat(scales, block)[: x.size].astype(np.float64)
    err = np.abs(x.astype(np.float64) - deq.astype(np.float64))
    assert np.all(err <= per_element * (1 + 1e-6))


@_BOUNDED
@given(st.sampled_from([8, 4, 2]), st.integers(0, 100), st.integers(0, 2**32 - 1))
def test_pack_unpack_roundtrip(bits: int, count: int, seed: int) -> None:
    # Prepare
    top = qmax(bits)
    q = np.random.default_rng(seed).integers(-top, top + 1, size=count).astype(np.int8)
    # Execute
    raw = pack_codes(q, bits=bits)
    # Assert
    assert len(raw) == packed_size(count, bits) == -(-count * bits // 8)
    np.testing.assert_array_equal(unpack_codes(raw, bits=bits, count=count), q)


def test_packing_is_compact_and_little_end_first() -> None:
    # 4 bits: codes 0 and 1 -> unsigned 7 and 8 -> 0x87; 2 bits: -1, 0, 1, 1 -> 0, 1, 2, 2.
    assert pack_codes(np.array([0, 1], dtype=np.int8), bits=4) == bytes([0x87])
    assert pack_codes(np.array([-1, 0, 1, 1], dtype=np.int8), bits=2) == bytes([0b10100100])
    assert len(pack_codes(np.zeros(1001, dtype=np.int8), bits=2)) == 251


@pytest.mark.parametrize(
    ("raw", "bits", "count"),
    [
        pytest.param(b"\x0f", 4, 2, id="nibble-15-out-of-range"),
        pytest.param(b"\xff", 2, 4, id="two-bit-3-out-of-range"),
        pytest.param(b"\xff", 8, 1, id="eight-bit-255-out-of-range"),
        pytest.param(b"\x77\x70", 4, 3, id="non-zero-padding"),
        pytest.param(b"\x77", 4, 3, id="too-short"),
        pytest.param(b"\x77\x07\x00", 4, 3, id="too-long"),
    ],
)
def test_unpack_rejects_bad_codes(raw: bytes, bits: int, count: int) -> None:
    with pytest.raises(NumericsError):
        unpack_codes(raw, bits=bits, count=count)


def test_quantize_rejects_unknown_bits() -> None:
    rng = np.random.default_rng(0)
    for bits in (1, 3, 16, 32):
        with pytest.raises(NumericsError, match="bits"):
            quantize(np.ones(4, dtype=np.float32), bits=bits, block=4, rng=rng)
    with pytest.raises(NumericsError):
        pack_codes(np.array([8], dtype=np.int8), bits=4)


def test_int8_wrappers_match_generic_quantize() -> None:
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    a = quantize_int8(x, block=64, rng=np.random.default_rng(5))
    b = quantize(x, bits=8, block=64, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(dequantize_int8(*a, block=64), dequantize(*b, block=64))
