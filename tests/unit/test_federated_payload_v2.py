"""Tests for payload format version 2: quant / topk / prune round trips, sizes, hostile bytes."""

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federated.errors import NumericsError, PayloadError
from federated.params import digest, flatten, spec_of
from federated.payload import PayloadLimits, apply_payload, make_payload, read_payload
from tests.unit.payload_helpers import model, nudged, pack, unpack

_V2_CASES = [
    pytest.param({"method": "quant", "bits": 8}, id="quant8"),
    pytest.param({"method": "quant", "bits": 4}, id="quant4"),
    pytest.param({"method": "quant", "bits": 2}, id="quant2"),
    pytest.param({"method": "topk", "density": 0.1, "bits": 32}, id="topk-float32"),
    pytest.param({"method": "topk", "density": 0.1, "bits": 4}, id="topk4"),
    pytest.param({"method": "topk", "density": 0.5, "bits": 2}, id="topk2"),
    pytest.param({"method": "prune", "sparsity": 0.5, "bits": 4}, id="prune4"),
    pytest.param({"method": "prune", "sparsity": 0.0, "bits": 32}, id="prune-nothing"),
]


@pytest.mark.parametrize("kwargs", _V2_CASES)
@pytest.mark.parametrize("with_base", [True, False], ids=["delta", "full"])
def test_roundtrip_rebuilds_exactly_what_the_sender_computed(
    kwargs: dict[str, Any], with_base: bool
) -> None:
    # Prepare
    base = model() if with_base else None
    target = nudged(model(), seed=5)
    # Execute
    blob, rebuilt = make_payload(target, base, rng=np.random.default_rng(2), block=8, **kwargs)
    payload = read_payload(blob)
    received = apply_payload(payload, base, expected_spec=spec_of(target))
    # Assert
    assert payload.version == 2
    assert payload.method == kwargs["method"]
    assert payload.bits == kwargs["bits"]
    assert payload.block == 8
    assert payload.base_digest == (None if base is None else digest(base))
    assert payload.digest == digest(rebuilt) == digest(received)
    for k in target:
        np.testing.assert_array_equal(received[k], rebuilt[k])
        assert received[k].dtype == np.float32


def test_quant_error_is_below_one_scale_of_the_delta() -> None:
    # Prepare
    base = model()
    target = nudged(base, seed=1, scale=0.1)
    for bits, top in ((8, 127), (4, 7), (2, 1)):
        # Execute
        _, rebuilt = make_payload(
            target, base, rng=np.random.default_rng(0), method="quant", bits=bits, block=4
        )
        # Assert: every block of 4 delta entries is off by less than its max / qmax.
        err = flatten(rebuilt) - flatten(target)
        delta = flatten(target) - flatten(base)
        pad = -delta.size % 4
        bound = np.repeat(np.abs(np.pad(delta, (0, pad)).reshape(-1, 4)).max(axis=1) / top, 4)
        assert np.all(np.abs(err) <= bound[: err.size] * (1 + 1e-5) + 1e-6)


def test_quant_payload_is_unbiased() -> None:
    # Prepare
    base = model()
    target = nudged(base, seed=1, scale=0.1)
    trials = 1500
    # Execute
    total = np.zeros(flatten(base).size)
    for seed in range(trials):
        blob, _ = make_payload(
            target, base, rng=np.random.default_rng(seed), method="quant", bits=2, block=16
        )
        total += flatten(read_payload(blob).delta)
    # Assert: the 2-bit scale is the block max; sd(mean) <= max / 2 / sqrt(trials).
    delta = flatten(target).astype(np.float64) - flatten(base)
    bound = np.abs(delta).max() / 2 / math.sqrt(trials)
    assert np.abs(total / trials - delta).max() < 5 * bound


def test_topk_sends_the_largest_entries_of_the_delta() -> None:
    # Prepare
    base = model()
    target = nudged(base, seed=3, scale=0.1)
    delta = flatten(target) - flatten(base)
    n = delta.size
    # Execute
    blob, _ = make_payload(
        target, base, rng=np.random.default_rng(0), method="topk", density=0.1, bits=32
    )
    payload = read_payload(blob)
    sent = flatten(payload.delta)
    # Assert
    k = math.ceil(0.1 * n)
    assert payload.nnz == k == np.count_nonzero(sent)
    assert payload.keep == 0.1
    kept = sent != 0
    np.testing.assert_allclose(sent[kept], delta[kept], atol=1e-6)
    assert np.abs(delta[kept]).min() >= np.abs(delta[~kept]).max()


def test_prune_of_a_full_model_zeroes_the_smallest_weights() -> None:
    # Prepare
    target = model(sizes=(32, 16, 4))
    # Execute
    blob, rebuilt = make_payload(
        target, None, rng=np.random.default_rng(0), method="prune", sparsity=0.75, bits=32
    )
    payload = read_payload(blob)
    # Assert: biases start at zero; each weight matrix keeps exactly its largest quarter.
    assert payload.keep == 0.25
    for name in ("w0", "w1"):
        kept = rebuilt[name] != 0
        assert kept.sum() == target[name].size - int(0.75 * target[name].size)
        np.testing.assert_array_equal(rebuilt[name][kept], target[name][kept])
        assert np.abs(target[name][kept]).min() >= np.abs(target[name][~kept]).max()


def test_sizes_shrink_with_bits_and_density() -> None:
    # Prepare: ~100k parameters, a full model.
    target = model(sizes=(256, 256, 128, 10))
    n = flatten(target).size

    def size(**kwargs: Any) -> int:
        return len(make_payload(target, None, rng=np.random.default_rng(0), **kwargs)[0])

    # Execute
    int8 = size(method="int8")
    q4, q2 = size(method="quant", bits=4), size(method="quant", bits=2)
    top = size(method="topk", density=0.01, bits=4)
    pruned = size(method="prune", sparsity=0.9, bits=4)
    # Assert: packed codes, per-block scales and compact indices.
    assert q4 <= (n // 2 + 4 * (n // 256 + 8)) * 1.05 + 512
    assert q2 <= (n // 4 + 4 * (n // 256 + 8)) * 1.05 + 512
    assert q2 < 0.6 * q4 < 0.6 * 0.6 * int8
    assert top < 0.01 * 4 * n  # under 1% of float32 bytes
    assert pruned < 0.1 * 4 * n


def test_int8_and_float32_still_write_version_1() -> None:
    # The live services' default keeps producing documents older receivers can read.
    for method in ("int8", "float32"):
        blob, _ = make_payload(model(), None, rng=np.random.default_rng(0), method=method)
        assert unpack(blob)["v"] == 1
        payload = read_payload(blob)
        assert payload.version == 1
        assert payload.bits == (8 if method == "int8" else 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"method": "int4"}, id="unknown-method"),
        pytest.param({"method": "int8", "bits": 4}, id="bits-for-v1"),
        pytest.param({"method": "quant", "bits": 32}, id="quant-32"),
        pytest.param({"method": "quant", "bits": 3}, id="bits-3"),
        pytest.param({"method": "topk"}, id="topk-no-density"),
        pytest.param({"method": "topk", "density": 0.0}, id="density-zero"),
        pytest.param({"method": "topk", "density": 1.5}, id="density-above-one"),
        pytest.param({"method": "quant", "density": 0.5}, id="density-for-quant"),
        pytest.param({"method": "prune"}, id="prune-no-sparsity"),
        pytest.param({"method": "prune", "sparsity": 1.0}, id="sparsity-one"),
        pytest.param({"method": "topk", "density": 0.5, "sparsity": 0.5}, id="both"),
        pytest.param({"method": "quant", "block": 0}, id="block-zero"),
    ],
)
def test_bad_arguments_raise_numerics_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(NumericsError):
        make_payload(model(), None, rng=np.random.default_rng(0), **kwargs)


def _document(**kwargs: Any) -> dict[str, Any]:
    blob, _ = make_payload(
        nudged(model(), 1), model(), rng=np.random.default_rng(0), block=8, **kwargs
    )
    return unpack(blob)


def _topk_document() -> dict[str, Any]:
    return _document(method="topk", density=0.3, bits=4)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document[key] = value

    return mutate


def _index(position: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document["index"][position] = value

    return mutate


def _scale(value: float) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        scales = np.frombuffer(document["scales"], dtype="<f4").copy()
        scales[0] = value
        document["scales"] = scales.astype("<f4").tobytes()

    return mutate


def _first_byte(value: int) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document["values"] = bytes([value]) + document["values"][1:]

    return mutate


def _gaps_past_the_end(document: dict[str, Any]) -> None:
    # As many indices as announced, each 128 past the previous: the last is beyond n.
    document["index"][0] = "gaps"
    document["index"][2] = b"\x7f" * document["index"][1]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_set("method", "quant"), id="topk-claims-dense"),
        pytest.param(_set("method", "zip"), id="unknown-method"),
        pytest.param(_set("bits", 3), id="bits-3"),
        pytest.param(_set("bits", 4.0), id="bits-float"),
        pytest.param(_set("bits", True), id="bits-bool"),
        pytest.param(_set("bits", 8), id="bits-mismatch"),
        pytest.param(_set("block", 0), id="block-zero"),
        pytest.param(_set("block", 2**40), id="block-huge"),
        pytest.param(_set("keep", 0.0), id="keep-zero"),
        pytest.param(_set("keep", 1.5), id="keep-above-one"),
        pytest.param(_set("keep", float("nan")), id="keep-nan"),
        pytest.param(_set("keep", 1), id="keep-int"),
        pytest.param(_set("keep", 0.01), id="more-entries-than-k"),
        pytest.param(_set("base", b"\x00" * 31), id="short-base"),
        pytest.param(_set("digest", "ab" * 32), id="hex-digest"),
        pytest.param(_set("spec", [["w0", [8, 7]], ["b0", [6]]]), id="spec-mismatch"),
        pytest.param(_set("spec", [["w0", [8, 6]], ["w0", [6]]]), id="duplicate-name"),
        pytest.param(_set("spec", [["w0", [2**40, 2**40]]]), id="huge-shape"),
        pytest.param(_set("spec", [["w0", [-1]]]), id="negative-dim"),
        pytest.param(_set("spec", [["w0"]]), id="spec-entry-short"),
        pytest.param(_set("spec", {"w0": [8, 6]}), id="spec-map"),
        pytest.param(_set("index", None), id="topk-without-index"),
        pytest.param(_set("index", [1, 2, 3]), id="index-wrong-types"),
        pytest.param(_set("index", ["gaps", 1]), id="index-short"),
        pytest.param(_index(0, "runs"), id="unknown-coding"),
        pytest.param(_index(1, -1), id="nnz-negative"),
        pytest.param(_index(1, 10**6), id="nnz-too-big"),
        pytest.param(_index(2, b"\xff" * 8), id="index-garbage"),
        pytest.param(_gaps_past_the_end, id="index-out-of-bounds"),
        pytest.param(_set("values", b""), id="values-short"),
        pytest.param(_set("values", "text"), id="values-str"),
        pytest.param(_set("scales", b"\x00" * 4), id="scales-short"),
        pytest.param(_scale(float("nan")), id="scale-nan"),
        pytest.param(_scale(float("inf")), id="scale-inf"),
        pytest.param(_scale(-1.0), id="scale-negative"),
        pytest.param(_scale(3e38), id="scale-overflows"),
        pytest.param(_first_byte(0xFF), id="code-out-of-range"),
        pytest.param(_set("extra", 1), id="extra-key"),
        pytest.param(lambda d: d.pop("digest"), id="missing-digest"),
    ],
)
def test_malformed_v2_documents_raise_payload_error(
    mutate: Callable[[dict[str, Any]], Any],
) -> None:
    # Prepare
    document = _topk_document()
    mutate(document)
    # Execute / Assert: reading fails, or applying does (digest, base or shape).
    with pytest.raises(PayloadError):
        apply_payload(read_payload(pack(document)), model(), expected_spec=spec_of(model()))


def test_non_finite_float32_values_are_rejected() -> None:
    document = _document(method="topk", density=0.3, bits=32)
    values = np.frombuffer(document["values"], dtype="<f4").copy()
    values[0] = np.inf
    document["values"] = values.tobytes()
    with pytest.raises(PayloadError, match="non-finite"):
        read_payload(pack(document))


def test_tampered_values_and_wrong_base_are_caught() -> None:
    # Prepare
    base = model()
    document = _topk_document()
    scales = np.frombuffer(document["scales"], dtype="<f4") * 2
    document["scales"] = scales.astype("<f4").tobytes()
    # Execute / Assert
    with pytest.raises(PayloadError, match="digest"):
        apply_payload(read_payload(pack(document)), base)
    honest = read_payload(pack(_topk_document()))
    with pytest.raises(PayloadError, match="base"):
        apply_payload(honest, nudged(base, 9))
    with pytest.raises(PayloadError, match="base"):
        apply_payload(honest, None)


def test_limits_are_enforced_on_v2() -> None:
    blob = pack(_topk_document())
    n = flatten(model()).size
    with pytest.raises(PayloadError):
        read_payload(blob, limits=PayloadLimits(max_elements=n - 1))
    with pytest.raises(PayloadError):
        read_payload(blob, limits=PayloadLimits(max_tensors=3))
    with pytest.raises(PayloadError):
        read_payload(blob, limits=PayloadLimits(max_bytes=len(blob) - 1))
    read_payload(blob, limits=PayloadLimits(max_bytes=len(blob), max_elements=n, max_tensors=4))


_FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
_FUZZ_KWARGS: dict[str, dict[str, Any]] = {
    "quant2": {"method": "quant", "bits": 2, "block": 4},
    "topk4": {"method": "topk", "density": 0.2, "bits": 4, "block": 4},
    "prune": {"method": "prune", "sparsity": 0.5, "bits": 8},
}
_BLOBS = {
    name: make_payload(nudged(model(), 1), model(), rng=np.random.default_rng(0), **kw)[0]
    for name, kw in _FUZZ_KWARGS.items()
}


@_FUZZ
@given(
    st.sampled_from(sorted(_BLOBS)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_corrupted_v2_blobs_raise_only_payload_error(
    name: str, edits: list[tuple[int, int]]
) -> None:
    blob = bytearray(_BLOBS[name])
    for pos, value in edits:
        blob[pos % len(blob)] = value
    with contextlib.suppress(PayloadError):
        apply_payload(read_payload(bytes(blob)), model())


@_FUZZ
@given(
    st.sampled_from(["quant", "topk", "prune", "mask", "x"]),
    st.sampled_from([32, 8, 4, 2, 1]),
    st.integers(-1, 40),
    st.floats(-0.5, 1.5) | st.integers(0, 1),
    st.lists(st.integers(-2, 12), max_size=3),
    st.none()
    | st.tuples(
        st.sampled_from(["gaps", "bitmap", "seeded"]), st.integers(-2, 60), st.binary(max_size=24)
    ),
    st.binary(max_size=80),
    st.binary(max_size=24),
)
def test_near_valid_v2_documents_raise_only_payload_error(
    method: str,
    bits: int,
    block: int,
    keep: float,
    shape: list[int],
    index: tuple[str, int, bytes] | None,
    values: bytes,
    scales: bytes,
) -> None:
    document = {
        "v": 2,
        "method": method,
        "bits": bits,
        "block": block,
        "keep": keep,
        "base": None,
        "digest": b"\x00" * 32,
        "spec": [["w", shape]],
        "index": None if index is None else list(index),
        "values": values,
        "scales": scales,
    }
    with contextlib.suppress(PayloadError):
        apply_payload(read_payload(pack(document)), None)
