"""Tests for the seeded sparse mask: ERK densities, determinism, sparse training, payloads."""

import hashlib
import math
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.errors import NumericsError, PayloadError
from federated.mask import SeededMask, erk_densities
from federated.model import init_mlp, train_local
from federated.params import Params, ParamSpec, flatten, spec_of
from federated.payload import apply_payload, make_payload, read_payload
from federated.simulation import digits_task, simulate

_SIZES = (64, 128, 96, 10)


def _spec(sizes: tuple[int, ...] = _SIZES) -> ParamSpec:
    return spec_of(init_mlp(sizes, np.random.default_rng(0)))


def _weights_kept(spec: ParamSpec, densities: tuple[float, ...]) -> float:
    sizes = [math.prod(s) for _, s in spec]
    weights = [i for i, (_, s) in enumerate(spec) if len(s) >= 2]
    return sum(densities[i] * sizes[i] for i in weights) / sum(sizes[i] for i in weights)


def test_erk_spends_the_budget_on_the_wide_layers_and_keeps_biases() -> None:
    # Prepare
    spec = _spec()
    # Execute
    densities = dict(zip((n for n, _ in spec), erk_densities(spec, 0.1), strict=True))
    # Assert: the weights keep 10% overall; the small output layer is denser than the wide
    # middle one, and every bias is whole.
    assert _weights_kept(spec, tuple(densities.values())) == pytest.approx(0.1)
    assert densities["w2"] > densities["w0"] > densities["w1"]
    assert all(densities[f"b{i}"] == 1.0 for i in range(3))


def test_erk_caps_layers_that_would_pass_one() -> None:
    spec = _spec((64, 1024, 960, 10))
    densities = erk_densities(spec, 0.1)
    assert densities[4] == 1.0  # the 960 x 10 output layer
    assert all(0.0 < d <= 1.0 for d in densities)
    assert _weights_kept(spec, densities) == pytest.approx(0.1)


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.lists(st.integers(1, 300), min_size=2, max_size=5),
    st.floats(0.001, 1.0),
)
def test_erk_always_keeps_the_requested_share(sizes: list[int], density: float) -> None:
    spec = _spec(tuple(sizes))
    densities = erk_densities(spec, density)
    assert all(0.0 < d <= 1.0 for d in densities)
    assert _weights_kept(spec, densities) == pytest.approx(density, rel=1e-9)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_erk_rejects_bad_densities(density: float) -> None:
    with pytest.raises(NumericsError):
        erk_densities(_spec(), density)


def test_mask_is_a_pure_function_of_seed_and_densities() -> None:
    # Prepare
    spec = _spec()
    mask = SeededMask.erk(spec, 0.1, seed=7)
    # Execute
    again = SeededMask(7, mask.densities).flat(spec)
    other = SeededMask(8, mask.densities).flat(spec)
    # Assert
    np.testing.assert_array_equal(mask.flat(spec), again)
    assert np.mean(mask.flat(spec) != other) > 0.05
    assert mask.flat(spec).size == flatten(init_mlp(_SIZES, np.random.default_rng(0))).size


def test_mask_positions_are_pinned() -> None:
    # Devices and servers must build the same mask on any numpy: pin one. A change here means
    # PCG64 or SeedSequence changed and every deployed device would disagree with the server.
    spec = _spec((8, 6, 3))
    flat = SeededMask(12345, (0.3, 1.0, 0.5, 1.0)).flat(spec)
    assert int(flat.sum()) == 30
    assert hashlib.sha256(np.packbits(flat).tobytes()).hexdigest()[:16] == "2bf7ee13da2baf0a"


def test_each_tensor_keeps_about_its_density() -> None:
    spec = _spec((64, 1024, 960, 10))
    mask = SeededMask.erk(spec, 0.1, seed=3)
    ones = mask.params(spec)
    for (name, _), density in zip(spec, mask.densities, strict=True):
        size = ones[name].size
        kept = float(ones[name].sum())
        # within 5 binomial standard deviations
        assert abs(kept - density * size) <= 5 * math.sqrt(size * density * (1 - density)) + 1


def test_apply_and_rescaled() -> None:
    # Prepare
    params = init_mlp(_SIZES, np.random.default_rng(1))
    mask = SeededMask.erk(spec_of(params), 0.2, seed=1)
    ones = mask.params(spec_of(params))
    # Execute
    masked = mask.apply(params)
    rescaled = mask.rescaled(params)
    # Assert
    for (name, value), density in zip(params.items(), mask.densities, strict=True):
        np.testing.assert_array_equal(masked[name], value * ones[name])
        np.testing.assert_allclose(rescaled[name], masked[name] / math.sqrt(density), rtol=1e-6)
        assert rescaled[name].dtype == np.float32


def test_bytes_round_trip_and_bad_bytes() -> None:
    mask = SeededMask.erk(_spec(), 0.1, seed=2**40)
    assert SeededMask.from_bytes(mask.to_bytes(), 6) == mask
    with pytest.raises(PayloadError):
        SeededMask.from_bytes(mask.to_bytes(), 5)
    bad = SeededMask(1, (1.0,)).to_bytes()[:8] + np.float64(np.nan).tobytes()
    with pytest.raises(PayloadError):
        SeededMask.from_bytes(bad, 1)


@pytest.mark.parametrize(
    ("seed", "densities"),
    [(-1, (0.5,)), (2**63, (0.5,)), (1, (0.0,)), (1, (1.5,)), (1, (float("inf"),))],
)
def test_bad_masks_are_refused(seed: int, densities: tuple[float, ...]) -> None:
    with pytest.raises(NumericsError):
        SeededMask(seed, densities)


def test_masked_training_moves_only_the_kept_entries() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    params = init_mlp((64, 32, 10), rng)
    mask = SeededMask.erk(spec_of(params), 0.3, seed=0)
    start = mask.apply(params)
    x = rng.standard_normal((40, 64)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    # Execute
    trained, _ = train_local(
        start, x, y, epochs=2, batch_size=8, lr=0.1, rng=rng, mask=mask.params(spec_of(params))
    )
    # Assert: nothing outside the mask moved, and training did move what is inside.
    kept = mask.flat(spec_of(params))
    assert np.all(flatten(trained)[~kept] == 0)
    assert np.any(flatten(trained)[kept] != flatten(start)[kept])


def test_simulate_with_a_mask_keeps_the_global_model_sparse() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    task = digits_task(10, 0.5, rng)
    initial = init_mlp(task.sizes, rng)
    mask = SeededMask.erk(spec_of(initial), 0.3, seed=4)
    # Execute
    result = simulate(
        task,
        iterations=3,
        clients_per_iteration=3,
        epochs=1,
        batch_size=16,
        lr=0.3,
        rng=rng,
        initial=initial,
        mask=mask,
    )
    # Assert
    assert result.final is not None
    assert np.all(flatten(result.final)[~mask.flat(spec_of(initial))] == 0)
    assert result.accuracy[-1] > 0.3


def _nudged_under(mask: SeededMask, params: Params, seed: int) -> Params:
    rng = np.random.default_rng(seed)
    noise = {k: 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    return mask.apply({k: params[k] + noise[k] for k in params})


@pytest.mark.parametrize("bits", [32, 8, 4, 2])
@pytest.mark.parametrize("with_base", [True, False], ids=["delta", "full"])
def test_mask_payload_round_trip(bits: int, with_base: bool) -> None:
    # Prepare
    params = init_mlp(_SIZES, np.random.default_rng(0))
    mask = SeededMask.erk(spec_of(params), 0.1, seed=9)
    base = mask.apply(params) if with_base else None
    target = _nudged_under(mask, params, seed=1)
    # Execute
    blob, rebuilt = make_payload(
        target, base, rng=np.random.default_rng(0), method="mask", bits=bits, mask=mask
    )
    payload = read_payload(blob)
    received = apply_payload(payload, base)
    # Assert: exactly what the sender computed, exact at 32 bits, zero outside the mask
    assert payload.method == "mask"
    assert payload.nnz == int(mask.flat(spec_of(params)).sum())
    for k in target:
        np.testing.assert_array_equal(received[k], rebuilt[k])
        if bits == 32:
            np.testing.assert_array_equal(received[k], target[k])
    assert np.all(flatten(received)[~mask.flat(spec_of(params))] == 0)


def test_mask_payload_is_smaller_than_topk_at_the_same_density() -> None:
    params = init_mlp(_SIZES, np.random.default_rng(0))
    mask = SeededMask.erk(spec_of(params), 0.1, seed=9)
    base, target = mask.apply(params), _nudged_under(mask, params, seed=1)
    share = float(mask.flat(spec_of(params)).mean())
    rng = np.random.default_rng(0)
    masked, _ = make_payload(target, base, rng=rng, method="mask", bits=4, mask=mask)
    topk, _ = make_payload(target, base, rng=rng, method="topk", bits=4, density=share)
    assert len(masked) < 0.8 * len(topk)


def _unpack(blob: bytes) -> dict[str, Any]:
    return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(blob), raw=False)


def _pack(document: Any) -> bytes:
    return zstandard.ZstdCompressor().compress(msgpack.packb(document, use_bin_type=True))


def _mask_document() -> tuple[dict[str, Any], Params]:
    params = init_mlp(_SIZES, np.random.default_rng(0))
    mask = SeededMask.erk(spec_of(params), 0.1, seed=9)
    base = mask.apply(params)
    blob, _ = make_payload(
        _nudged_under(mask, params, 1),
        base,
        rng=np.random.default_rng(0),
        method="mask",
        bits=4,
        mask=mask,
    )
    return _unpack(blob), base


def _other_mask(document: dict[str, Any]) -> None:
    raw = bytearray(document["index"][2])
    raw[0] ^= 1  # another seed: other positions, same count only by chance
    document["index"][2] = bytes(raw)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["index"].__setitem__(0, "gaps"), id="mask-with-gaps"),
        pytest.param(lambda d: d.__setitem__("method", "topk"), id="topk-with-seeded"),
        pytest.param(lambda d: d["index"].__setitem__(1, d["index"][1] - 1), id="nnz-off"),
        pytest.param(lambda d: d["index"].__setitem__(2, d["index"][2][:-8]), id="short-mask"),
        pytest.param(
            lambda d: d["index"].__setitem__(2, d["index"][2][:8] + b"\xff" * 48),
            id="nan-densities",
        ),
        pytest.param(_other_mask, id="other-seed"),
    ],
)
def test_malformed_mask_payloads_raise_payload_error(mutate: Any) -> None:
    document, base = _mask_document()
    mutate(document)
    with pytest.raises(PayloadError):
        apply_payload(read_payload(_pack(document)), base)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"method": "mask", "bits": 4}, id="mask-without-mask"),
        pytest.param({"method": "topk", "density": 0.1, "mask": True}, id="mask-for-topk"),
        pytest.param({"method": "int8", "mask": True}, id="mask-for-v1"),
    ],
)
def test_mask_arguments_are_checked(kwargs: dict[str, Any]) -> None:
    params = init_mlp(_SIZES, np.random.default_rng(0))
    if kwargs.get("mask") is True:
        kwargs = {**kwargs, "mask": SeededMask.erk(spec_of(params), 0.1, seed=1)}
    with pytest.raises(NumericsError):
        make_payload(params, None, rng=np.random.default_rng(0), **kwargs)
