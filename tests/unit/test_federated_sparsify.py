"""Tests for federated.sparsify: top-k, error feedback, magnitude pruning and index coding."""

import contextlib

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.errors import NumericsError, PayloadError
from federated.params import Params, add, flatten, sub
from federated.sparsify import (
    ErrorFeedback,
    decode_indices,
    encode_indices,
    max_index_bytes,
    prune_magnitude,
    top_k,
)

_PROPERTY = settings(max_examples=200, deadline=None, database=None)


def test_top_k_picks_largest_magnitudes_sorted() -> None:
    # Prepare
    x = np.array([0.1, -5.0, 0.0, 3.0, -0.2, 4.0], dtype=np.float32)
    # Execute / Assert
    np.testing.assert_array_equal(top_k(x, 3), [1, 3, 5])
    assert top_k(x, 3).dtype == np.int64
    assert top_k(x, 0).size == 0
    np.testing.assert_array_equal(top_k(x, 6), np.arange(6))
    with pytest.raises(NumericsError):
        top_k(x, 7)


@_PROPERTY
@given(st.integers(1, 500), st.data())
def test_top_k_keeps_nothing_smaller_than_what_it_drops(n: int, data: st.DataObject) -> None:
    # Prepare
    k = data.draw(st.integers(0, n))
    x = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).standard_normal(n)
    # Execute
    idx = top_k(x, k)
    # Assert
    dropped = np.setdiff1d(np.arange(n), idx)
    assert idx.size == k
    assert np.all(np.diff(idx) > 0)
    if k and dropped.size:
        assert np.abs(x[idx]).min() >= np.abs(x[dropped]).max()


def test_prune_zeroes_the_smallest_fraction_of_each_tensor() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    params: Params = {
        "w": rng.standard_normal((10, 20)).astype(np.float32),
        "b": np.arange(1, 11, dtype=np.float32),
    }
    # Execute
    pruned = prune_magnitude(params, 0.75)
    # Assert: 150 of 200 weights zeroed; the survivors are unchanged and the largest.
    assert int(np.sum(pruned["w"] == 0)) == 150
    np.testing.assert_array_equal(pruned["b"], params["b"])  # biases are kept whole
    np.testing.assert_array_equal(
        prune_magnitude(params, 0.75, min_ndim=1)["b"], [0, 0, 0, 0, 0, 0, 0, 8, 9, 10]
    )
    kept = pruned["w"] != 0
    np.testing.assert_array_equal(pruned["w"][kept], params["w"][kept])
    assert np.abs(params["w"][kept]).min() >= np.abs(params["w"][~kept]).max()
    assert pruned["w"].dtype == np.float32
    assert prune_magnitude(params, 0.0)["w"].tolist() == params["w"].tolist()
    with pytest.raises(NumericsError):
        prune_magnitude(params, 1.0)


def _top_k_params(update: Params, k: int) -> Params:
    vec = flatten(update)
    sent = np.zeros_like(vec)
    idx = top_k(vec, k)
    sent[idx] = vec[idx]
    out: Params = {}
    offset = 0
    for name, arr in update.items():
        out[name] = sent[offset : offset + arr.size].reshape(arr.shape)
        offset += arr.size
    return out


def test_error_feedback_loses_nothing_only_delays_it() -> None:
    # Prepare: 20 updates of 50 numbers, each sent as its top 5 (plus the residual).
    rng = np.random.default_rng(1)
    feedback = ErrorFeedback()
    total_in = np.zeros(50)
    total_sent = np.zeros(50)
    # Execute
    for _ in range(20):
        delta: Params = {"w": rng.standard_normal(50).astype(np.float32)}
        wanted = feedback.compensate(delta)
        sent = _top_k_params(wanted, 5)
        feedback.record(wanted, sent)
        total_in += delta["w"]
        total_sent += sent["w"]
    # Assert: what was sent plus what is still held back is everything that came in.
    assert feedback.residual is not None
    np.testing.assert_allclose(total_sent + feedback.residual["w"], total_in, atol=1e-4)


def test_error_feedback_adds_the_residual_to_the_next_update() -> None:
    # Prepare
    feedback = ErrorFeedback()
    first: Params = {"w": np.array([3.0, 1.0, -2.0], dtype=np.float32)}
    # Execute
    wanted = feedback.compensate(first)
    feedback.record(wanted, {"w": np.array([3.0, 0.0, 0.0], dtype=np.float32)})
    second = feedback.compensate({"w": np.array([0.5, 0.5, 0.5], dtype=np.float32)})
    # Assert
    np.testing.assert_array_equal(wanted["w"], first["w"])
    np.testing.assert_array_equal(second["w"], [0.5, 1.5, -1.5])


def test_error_feedback_beats_plain_top_k_on_a_constant_signal() -> None:
    # Prepare: the same small update every step; top-1 of 10 without memory only ever sends
    # the largest coordinate, with memory every coordinate eventually gets through.
    signal: Params = {"w": np.linspace(1.0, 0.5, 10).astype(np.float32)}
    feedback = ErrorFeedback()
    plain = np.zeros(10)
    remembered = np.zeros(10)
    # Execute
    for _ in range(200):
        plain += _top_k_params(signal, 1)["w"]
        wanted = feedback.compensate(signal)
        sent = _top_k_params(wanted, 1)
        feedback.record(wanted, sent)
        remembered += sent["w"]
    # Assert
    target = 200 * signal["w"]
    assert np.count_nonzero(plain) == 1
    # The residual stays bounded (here by 10 steps' worth); without memory the gap grows.
    assert np.abs(remembered - target).max() < 10 < 50 < np.abs(plain - target).max()


def test_error_feedback_round_trips_through_params_algebra() -> None:
    delta: Params = {"a": np.ones((2, 2), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    feedback = ErrorFeedback()
    wanted = feedback.compensate(delta)
    feedback.record(wanted, sub(wanted, delta))
    assert feedback.residual is not None
    np.testing.assert_array_equal(add(feedback.residual, delta)["a"], 2 * delta["a"])


@_PROPERTY
@given(st.integers(1, 3000), st.data())
def test_index_coding_round_trips(n: int, data: st.DataObject) -> None:
    # Prepare
    density = data.draw(st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.5, 1.0]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    idx = np.flatnonzero(rng.random(n) < density)
    # Execute
    coding, raw = encode_indices(idx, n)
    # Assert
    np.testing.assert_array_equal(decode_indices(coding, raw, n=n, count=idx.size), idx)


@_PROPERTY
@given(st.integers(1, 3000), st.data())
def test_encoded_indices_never_exceed_the_size_decoders_accept(n: int, data: st.DataObject) -> None:
    # Prepare: sparse or clustered positions, large gaps included.
    count = data.draw(st.integers(0, min(n, 200)))
    idx = np.array(
        sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=count, max_size=count)))
    )
    # Execute
    coding, raw = encode_indices(idx.astype(np.int64), n)
    # Assert
    assert len(raw) <= max_index_bytes(coding, n=n, count=idx.size)


def test_index_coding_picks_the_smaller_after_zstd() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    n = 100_000
    compressor = zstandard.ZstdCompressor(level=3)
    sizes = {}
    for density in (0.001, 0.01, 0.05, 0.2, 0.5):
        idx = np.flatnonzero(rng.random(n) < density)
        # Execute
        coding, raw = encode_indices(idx, n)
        sizes[density] = (coding, len(compressor.compress(raw)) / idx.size)
    # Assert: gaps are about a byte an index when sparse; the bitmap wins when dense.
    assert sizes[0.001][0] == "gaps"
    assert sizes[0.01][0] == "gaps"
    assert sizes[0.01][1] < 1.25
    assert sizes[0.5][0] == "bitmap"
    assert sizes[0.5][1] < 0.26  # two bits per index: n / 8 bytes for n / 2 indices


def test_varint_gaps_are_leb128_of_gap_minus_one() -> None:
    # 0 -> 0; 5 -> gap 4; 300 -> gap 294 = 0xA6 0x02
    assert encode_indices(np.array([0, 5, 300]), 1 << 20)[1] == bytes([0, 4, 0xA6, 0x02])
    assert encode_indices(np.array([0, 5, 300]), 1 << 20)[0] == "gaps"


def test_encode_rejects_unsorted_or_out_of_range() -> None:
    for idx in ([3, 1], [1, 1], [-1], [10]):
        with pytest.raises(NumericsError):
            encode_indices(np.array(idx), 10)


@pytest.mark.parametrize(
    ("coding", "raw", "n", "count"),
    [
        pytest.param("gaps", bytes([9]), 9, 1, id="index-equals-n"),
        pytest.param("gaps", bytes([3, 0xAC, 0x02]), 300, 2, id="second-index-out-of-range"),
        pytest.param("gaps", bytes([1, 0x80]), 10, 2, id="truncated-varint"),
        pytest.param("gaps", bytes([1, 2]), 10, 1, id="more-values-than-count"),
        pytest.param("gaps", bytes([1]), 10, 2, id="fewer-values-than-count"),
        pytest.param("gaps", bytes([0x81, 0x00]), 1000, 1, id="overlong-varint"),
        pytest.param("gaps", bytes([0xFF] * 9 + [0x7F]), 1000, 1, id="huge-varint"),
        pytest.param("gaps", b"", 10, 1, id="empty"),
        pytest.param("bitmap", bytes([0b101]), 8, 1, id="bitmap-count-mismatch"),
        pytest.param("bitmap", bytes([0b101]), 2, 1, id="bitmap-padding-bit-set"),
        pytest.param("bitmap", bytes([1, 0]), 8, 1, id="bitmap-too-long"),
        pytest.param("bitmap", b"", 8, 0, id="bitmap-too-short"),
        pytest.param("runs", b"", 8, 0, id="unknown-coding"),
    ],
)
def test_decode_rejects_hostile_indices(coding: str, raw: bytes, n: int, count: int) -> None:
    with pytest.raises(PayloadError):
        decode_indices(coding, raw, n=n, count=count)


def test_duplicate_or_unsorted_indices_cannot_be_expressed() -> None:
    # Every varint string that decodes gives strictly increasing indices: gaps are >= 0 and
    # the coding stores gap - 1. A bitmap has one bit per position, so no duplicates either.
    idx = decode_indices("gaps", bytes([5, 0, 0, 3]), n=100, count=4)
    np.testing.assert_array_equal(idx, [5, 6, 7, 11])


@settings(max_examples=500, deadline=None, database=None)
@given(
    st.sampled_from(["gaps", "bitmap"]),
    st.binary(max_size=64),
    st.integers(0, 600),
    st.integers(0, 100),
)
def test_decode_of_random_bytes_raises_only_payload_error(
    coding: str, raw: bytes, n: int, count: int
) -> None:
    with contextlib.suppress(PayloadError):
        idx = decode_indices(coding, raw, n=n, count=count)
        assert idx.size == count
        assert np.all(np.diff(idx) > 0)
        assert idx.size == 0 or 0 <= idx[0] <= idx[-1] < n
