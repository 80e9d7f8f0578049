"""Tests for federated.payload: round trips, sizes, and rejection of bad or hostile bytes."""

import contextlib
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federated import (
    PayloadError,
    PayloadLimits,
    apply_payload,
    digest,
    make_payload,
    read_payload,
    spec_of,
)
from tests.unit.payload_helpers import model, nudged, pack, unpack


@pytest.mark.parametrize("method", ["int8", "float32"])
def test_full_model_roundtrip(method: str) -> None:
    # Prepare
    target = model()
    # Execute
    blob, rebuilt = make_payload(target, None, rng=np.random.default_rng(1), method=method)
    payload = read_payload(blob)
    received = apply_payload(payload, None, expected_spec=spec_of(target))
    # Assert
    assert payload.method == method
    assert payload.base_digest is None
    assert payload.digest == digest(rebuilt) == digest(received)
    for k in target:
        np.testing.assert_array_equal(received[k], rebuilt[k])
        assert received[k].dtype == np.float32
        bound = 0.0 if method == "float32" else np.abs(target[k]).max() / 127
        assert np.abs(received[k] - target[k]).max() <= bound * (1 + 1e-6)


@pytest.mark.parametrize("method", ["int8", "float32"])
def test_delta_roundtrip(method: str) -> None:
    # Prepare
    base = model()
    target = nudged(base, seed=5)
    # Execute
    blob, rebuilt = make_payload(target, base, rng=np.random.default_rng(2), method=method, block=4)
    payload = read_payload(blob)
    received = apply_payload(payload, base)
    # Assert
    assert payload.base_digest == digest(base)
    assert digest(received) == digest(rebuilt)
    for k in target:
        np.testing.assert_allclose(payload.delta[k], received[k] - base[k], atol=1e-6)
        # Deltas are small, so int8 error is far below the size of the weights themselves.
        np.testing.assert_allclose(received[k], target[k], atol=0.05 / 127 * 4)


def test_int8_is_about_a_quarter_of_float32() -> None:
    # Prepare: ~100k parameters.
    target = model(sizes=(256, 256, 128, 10))
    # Execute
    b8, _ = make_payload(target, None, rng=np.random.default_rng(0), method="int8", block=256)
    b32, _ = make_payload(target, None, rng=np.random.default_rng(0), method="float32")
    # Assert: raw float32 is 4 bytes per element; int8 is 1 byte plus 4 bytes per 256.
    n = sum(v.size for v in target.values())
    assert len(b32) > 0.8 * 4 * n
    assert len(b8) <= (n + 4 * (n // 256 + 8)) * 1.05 + 512
    assert len(b8) < 0.3 * len(b32)


def test_make_payload_is_deterministic_given_rng() -> None:
    target, base = nudged(model(), 1), model()
    a, _ = make_payload(target, base, rng=np.random.default_rng(3))
    b, _ = make_payload(target, base, rng=np.random.default_rng(3))
    assert a == b


def _blob() -> bytes:
    return make_payload(nudged(model(), 1), model(), rng=np.random.default_rng(0), block=8)[0]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:-1], id="last-byte-missing"),
        pytest.param(lambda b: b[:30] + bytes([b[30] ^ 0xFF]) + b[31:], id="flipped-byte"),
        pytest.param(lambda b: b + b"\x00", id="trailing-byte"),
        pytest.param(lambda b: b + b, id="two-frames"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"\x28\xb5\x2f", id="short-magic"),
        pytest.param(lambda b: msgpack.packb({"v": 1}), id="not-zstd"),
    ],
)
def test_corrupted_bytes_raise_payload_error(mutate: Callable[[Any], Any]) -> None:
    with pytest.raises(PayloadError):
        read_payload(mutate(_blob()))


def test_non_bytes_raise_payload_error() -> None:
    with pytest.raises(PayloadError):
        read_payload("not bytes")  # type: ignore[arg-type]


def test_zip_bomb_is_rejected_before_decompressing() -> None:
    # Prepare: 65 MiB of zeros compress to a few kB but declare a huge content size.
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (65 * 1024 * 1024))
    # Execute / Assert
    assert len(bomb) < 64 * 1024
    with pytest.raises(PayloadError, match="declares"):
        read_payload(bomb)


def test_missing_content_size_is_rejected() -> None:
    raw = zstandard.ZstdDecompressor().decompress(_blob())
    blob = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    with pytest.raises(PayloadError, match="content size"):
        read_payload(blob)


def test_size_limits_are_enforced() -> None:
    blob = _blob()
    n = sum(v.size for v in model().values())
    with pytest.raises(PayloadError):
        read_payload(blob, limits=PayloadLimits(max_bytes=len(blob) - 1))
    with pytest.raises(PayloadError):
        read_payload(blob, limits=PayloadLimits(max_decompressed=100))
    with pytest.raises(PayloadError):
        read_payload(blob, limits=PayloadLimits(max_elements=n - 1))
    with pytest.raises(PayloadError):
        read_payload(blob, limits=PayloadLimits(max_tensors=3))
    read_payload(blob, limits=PayloadLimits(max_bytes=len(blob), max_elements=n, max_tensors=4))


def test_wrong_base_is_rejected() -> None:
    # Prepare
    base = model()
    payload = read_payload(make_payload(nudged(base, 1), base, rng=np.random.default_rng(0))[0])
    full = read_payload(make_payload(base, None, rng=np.random.default_rng(0))[0])
    # Execute / Assert
    with pytest.raises(PayloadError, match="base"):
        apply_payload(payload, nudged(base, 2))
    with pytest.raises(PayloadError, match="base"):
        apply_payload(payload, None)
    with pytest.raises(PayloadError, match="base"):
        apply_payload(full, base)


def test_tampered_digest_is_rejected() -> None:
    # Prepare
    base = model()
    document = unpack(make_payload(nudged(base, 1), base, rng=np.random.default_rng(0))[0])
    document["digest"] = digest(nudged(base, 1))
    # Execute
    payload = read_payload(pack(document))
    # Assert
    with pytest.raises(PayloadError, match="digest"):
        apply_payload(payload, base)


def test_tampered_values_are_caught_by_the_digest() -> None:
    document = unpack(make_payload(model(), None, rng=np.random.default_rng(0))[0])
    q = bytearray(document["tensors"][0]["q"])
    q[0] = (q[0] + 1) % 256
    document["tensors"][0]["q"] = bytes(q)
    with pytest.raises(PayloadError, match="digest"):
        apply_payload(read_payload(pack(document)), None)


def _float32_document() -> dict[str, Any]:
    return unpack(make_payload(model(), None, rng=np.random.default_rng(0), method="float32")[0])


def _int8_document() -> dict[str, Any]:
    return unpack(make_payload(model(), None, rng=np.random.default_rng(0), block=8)[0])


def test_nan_values_and_scales_are_rejected() -> None:
    # Prepare
    values = _float32_document()
    q = np.frombuffer(values["tensors"][0]["q"], dtype="<f4").copy()
    q[3] = np.nan
    values["tensors"][0]["q"] = q.tobytes()
    scales = _int8_document()
    s = np.frombuffer(scales["tensors"][0]["scales"], dtype="<f4").copy()
    s[0] = np.inf
    scales["tensors"][0]["scales"] = s.tobytes()
    # Execute / Assert
    with pytest.raises(PayloadError, match="non-finite"):
        read_payload(pack(values))
    with pytest.raises(PayloadError, match="scales"):
        read_payload(pack(scales))


def test_overflowing_scale_is_rejected() -> None:
    document = _int8_document()
    scales = np.full(len(document["tensors"][0]["scales"]) // 4, 3e38, dtype="<f4")
    document["tensors"][0]["scales"] = scales.tobytes()
    with pytest.raises(PayloadError):
        read_payload(pack(document))


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_set(("v",), 2), id="version-2"),
        pytest.param(_set(("v",), True), id="version-bool"),
        pytest.param(_set(("v",), 1.0), id="version-float"),
        pytest.param(_set(("method",), "int4"), id="unknown-method"),
        pytest.param(_set(("block",), 0), id="block-zero"),
        pytest.param(_set(("block",), "8"), id="block-str"),
        pytest.param(_set(("digest",), "abc"), id="short-digest"),
        pytest.param(_set(("digest",), "Z" * 64), id="non-hex-digest"),
        pytest.param(_set(("base_digest",), 7), id="int-base-digest"),
        pytest.param(_set(("tensors",), {}), id="tensors-map"),
        pytest.param(_set(("tensors", 0, "shape"), [8, 7]), id="shape-too-big"),
        pytest.param(_set(("tensors", 0, "shape"), [6, 8]), id="shape-transposed-ok-size"),
        pytest.param(_set(("tensors", 0, "shape"), [-8, 6]), id="negative-dim"),
        pytest.param(_set(("tensors", 0, "shape"), [2**63, 2**63]), id="huge-dim"),
        pytest.param(_set(("tensors", 0, "shape"), 48), id="shape-int"),
        pytest.param(_set(("tensors", 0, "shape"), [1] * 9), id="too-many-dims"),
        pytest.param(_set(("tensors", 0, "q"), "text"), id="q-str"),
        pytest.param(_set(("tensors", 0, "scales"), b"\x00" * 4), id="scales-short"),
        pytest.param(_set(("tensors", 0, "name"), ""), id="empty-name"),
        pytest.param(_set(("tensors", 1, "name"), "w0"), id="duplicate-name"),
        pytest.param(_set(("tensors", 0, "extra"), 1), id="extra-tensor-key"),
        pytest.param(_set(("extra",), 1), id="extra-top-key"),
        pytest.param(lambda d: d.pop("digest"), id="missing-digest"),
    ],
)
def test_malformed_documents_raise_payload_error(mutate: Callable[[Any], Any]) -> None:
    # Prepare
    document = _int8_document()
    mutate(document)
    blob = pack(document)
    # Execute / Assert: either reading fails, or (same size, other shape) applying does.
    with pytest.raises(PayloadError):
        apply_payload(read_payload(blob), None, expected_spec=spec_of(model()))


def test_non_map_documents_and_trailing_msgpack_are_rejected() -> None:
    for document in ([1, 2, 3], None, 3, "x", b"x"):
        with pytest.raises(PayloadError):
            read_payload(pack(document))
    raw = msgpack.packb(_int8_document(), use_bin_type=True) + msgpack.packb(0)
    with pytest.raises(PayloadError, match="trailing"):
        read_payload(zstandard.ZstdCompressor().compress(raw))


def test_shape_mismatch_with_base_or_expected_spec_is_rejected() -> None:
    # Prepare: a full model of a different architecture.
    other = model(sizes=(8, 5, 3))
    payload = read_payload(make_payload(other, None, rng=np.random.default_rng(0))[0])
    # Execute / Assert
    with pytest.raises(PayloadError, match="expected"):
        apply_payload(payload, None, expected_spec=spec_of(model()))
    apply_payload(payload, None, expected_spec=spec_of(other))


_FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@_FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_payload_error(blob: bytes) -> None:
    with contextlib.suppress(PayloadError):
        read_payload(blob)


@_FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_valid_blobs_raise_only_payload_error(edits: list[tuple[int, int]]) -> None:
    blob = bytearray(_blob())
    for pos, value in edits:
        blob[pos % len(blob)] = value
    with contextlib.suppress(PayloadError):
        apply_payload(read_payload(bytes(blob)), model())


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=64)
)
_KEYS = ["v", "method", "block", "base_digest", "digest", "tensors", "name", "shape", "q", "scales"]
_documents = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=20,
)


@_FUZZ
@given(_documents)
def test_random_documents_raise_only_payload_error(document: Any) -> None:
    try:
        blob = pack(document)
    except (OverflowError, ValueError):
        return  # not representable in msgpack
    with contextlib.suppress(PayloadError):
        apply_payload(read_payload(blob), None)


@_FUZZ
@given(
    st.lists(st.integers(-3, 70), min_size=0, max_size=3),
    st.integers(-1, 300),
    st.binary(max_size=80),
    st.binary(max_size=40),
    st.sampled_from(["int8", "float32"]),
)
def test_near_valid_documents_raise_only_payload_error(
    shape: list[int], block: int, q: bytes, scales: bytes, method: str
) -> None:
    document = {
        "v": 1,
        "method": method,
        "block": block,
        "base_digest": None,
        "digest": "0" * 64,
        "tensors": [{"name": "w", "shape": shape, "q": q, "scales": scales}],
    }
    with contextlib.suppress(PayloadError):
        apply_payload(read_payload(pack(document)), None)
