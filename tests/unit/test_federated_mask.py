"""Tests for the seeded sparse mask: ERK densities, determinism, sparse training, payloads."""

import contextlib
import hashlib
import math
import struct
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.errors import NumericsError, PayloadError
from federated.mask import SeededMask, erk_densities
from federated.model import init_mlp, train_local
from federated.params import Params, ParamSpec, flatten, spec_of
from federated.payload import apply_payload, make_payload, read_payload
from federated.simulation import FederatedTask, SimulationResult, digits_task, simulate
from tests.unit.payload_helpers import pack, unpack

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


def _by_the_docstring(seed: int, index: int, density: float, size: int) -> np.ndarray:
    """The mask of one tensor rebuilt from `federated.mask`'s description alone."""
    key = hashlib.sha256(b"fedsaga/mask/v1" + struct.pack("<QI", seed, index)).digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(4 * size)), dtype="<u4")
    return words < math.floor(density * 2**32)


@pytest.mark.parametrize(
    ("seed", "densities", "count", "bits"),
    [
        (12345, (0.3, 1.0, 0.5, 1.0), 29, "504c16530829fc014ce0"),
        (2**40 + 7, (0.999999, 1.0, 0.01, 1.0), 57, "fffffffffffffc0000e0"),
    ],
)
def test_mask_positions_are_pinned(
    seed: int, densities: tuple[float, ...], count: int, bits: str
) -> None:
    # Devices and servers must build the same mask in any language: the positions follow the
    # algorithm the module docstring gives, and are pinned so a change cannot pass unnoticed.
    spec = _spec((8, 6, 3))
    flat = SeededMask(seed, densities).flat(spec)
    expected = np.concatenate(
        [
            _by_the_docstring(seed, j, d, math.prod(shape))
            if d < 1
            else np.ones(math.prod(shape), dtype=bool)
            for j, ((_, shape), d) in enumerate(zip(spec, densities, strict=True))
        ]
    )
    np.testing.assert_array_equal(flat, expected)
    assert int(flat.sum()) == count
    assert np.packbits(flat).tobytes().hex() == bits


def test_flat_refuses_a_spec_of_another_length() -> None:
    with pytest.raises(NumericsError, match="densities"):
        SeededMask(1, (0.5, 1.0)).flat(_spec())


def test_erk_handles_higher_rank_and_empty_weights() -> None:
    spec: ParamSpec = (("conv", (3, 3, 8, 16)), ("empty", (0, 5)), ("fc", (64, 10)), ("b", (10,)))
    densities = erk_densities(spec, 0.2)
    assert densities[1] == 1.0
    assert densities[3] == 1.0
    assert _weights_kept(spec, densities) == pytest.approx(0.2)
    assert SeededMask(3, densities).flat(spec).size == 3 * 3 * 8 * 16 + 64 * 10 + 10


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
    mask = SeededMask.erk(_spec(), 0.1, seed=2**64 - 1)
    assert SeededMask.from_bytes(mask.to_bytes(), 6) == mask
    with pytest.raises(PayloadError):
        SeededMask.from_bytes(mask.to_bytes(), 5)
    bad = SeededMask(1, (1.0,)).to_bytes()[:8] + np.float64(np.nan).tobytes()
    with pytest.raises(PayloadError):
        SeededMask.from_bytes(bad, 1)


@pytest.mark.parametrize(
    ("seed", "densities"),
    [
        (-1, (0.5,)),
        (2**64, (0.5,)),
        (1.5, (0.5,)),
        ("1", (0.5,)),
        (True, (0.5,)),
        (1, (0.0,)),
        (1, (1.5,)),
        (1, (float("inf"),)),
    ],
)
def test_bad_masks_are_refused(seed: Any, densities: tuple[float, ...]) -> None:
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
        start, x, y, epochs=2, batch_size=8, lr=0.1, rng=rng, trainable=mask.params(spec_of(params))
    )
    # Assert: nothing outside the mask moved, and training did move what is inside.
    kept = mask.flat(spec_of(params))
    assert np.all(flatten(trained)[~kept] == 0)
    assert np.any(flatten(trained)[kept] != flatten(start)[kept])


def _masked_setup() -> tuple[np.random.Generator, FederatedTask, SeededMask]:
    """A small digits task and a 30% mask for its MLP."""
    rng = np.random.default_rng(0)
    task = digits_task(10, 0.5, rng)
    return rng, task, SeededMask.erk(spec_of(init_mlp(task.sizes, rng)), 0.3, seed=4)


def _masked_run(
    task: FederatedTask, rng: np.random.Generator, mask: SeededMask, **overrides: Any
) -> SimulationResult:
    """`simulate` under `mask` with short settings; `overrides` replace any of them."""
    settings: dict[str, Any] = {
        "iterations": 2,
        "clients_per_iteration": 3,
        "epochs": 1,
        "batch_size": 16,
        "lr": 0.3,
    }
    return simulate(task, rng=rng, mask=mask, **(settings | overrides))


def test_simulate_with_a_mask_keeps_the_global_model_sparse() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    task = digits_task(10, 0.5, rng)
    initial = init_mlp(task.sizes, rng)
    mask = SeededMask.erk(spec_of(initial), 0.3, seed=4)
    # Execute
    result = _masked_run(task, rng, mask, iterations=3, initial=initial)
    # Assert
    assert result.final is not None
    assert np.all(flatten(result.final)[~mask.flat(spec_of(result.final))] == 0)
    assert result.accuracy[-1] > 0.3


def test_simulate_masks_a_given_model_without_rescaling_it() -> None:
    # Prepare: resuming from a model must not rescale it again
    rng, task, mask = _masked_setup()
    given_model = mask.rescaled(init_mlp(task.sizes, rng))
    seen: list[Params] = []

    def downlink(target: Params, held: Params | None, _: np.random.Generator) -> tuple[Params, int]:
        seen.append(target)
        return target, 0

    # Execute
    _masked_run(
        task,
        rng,
        mask,
        iterations=1,
        clients_per_iteration=1,
        initial=given_model,
        downlink=downlink,
    )
    # Assert
    np.testing.assert_array_equal(flatten(seen[0]), flatten(given_model))


def test_server_keeps_the_model_under_the_mask_whatever_the_uplink_sends() -> None:
    # Prepare: an uplink that adds dense noise, as DP or an attacker would
    rng, task, mask = _masked_setup()

    def noisy(delta: Params, noise_rng: np.random.Generator) -> tuple[Params, int]:
        return {k: v + noise_rng.normal(0, 0.01, v.shape) for k, v in delta.items()}, 0

    # Execute
    result = _masked_run(task, rng, mask, uplink=noisy)
    # Assert
    assert result.final is not None
    kept = mask.flat(spec_of(result.final))
    assert np.all(flatten(result.final)[~kept] == 0)
    assert np.count_nonzero(flatten(result.final)[kept]) > 0.9 * kept.sum()


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
    assert payload.keep == pytest.approx(float(mask.flat(spec_of(params)).mean()))
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
    return unpack(blob), base


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
        apply_payload(read_payload(pack(document)), base)


def test_a_mask_that_keeps_nothing_is_refused() -> None:
    params = init_mlp((4, 3, 2), np.random.default_rng(0))
    empty = SeededMask(1, (1e-9,) * len(params))
    with pytest.raises(NumericsError, match="keeps no entry"):
        make_payload(params, None, rng=np.random.default_rng(0), method="mask", mask=empty)


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


_FUZZ_MASK = SeededMask(5, (0.3, 1.0))
_FUZZ_SPEC: ParamSpec = (("w", (16, 8)), ("b", (8,)))


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.integers(-2, 200),
    st.integers(0, 2**64 - 1) | st.just(5),
    st.floats(allow_nan=True, allow_infinity=True) | st.just(0.3),
    st.integers(0, 200),
    st.sampled_from([32, 8, 4, 2]),
)
def test_near_valid_mask_documents_raise_only_payload_error(
    nnz: int, seed: int, density: float, values_len: int, bits: int
) -> None:
    # Valid mask bytes get the decoder past the index checks; nnz, seed, density and the
    # values' length are then perturbed around what the honest mask keeps.
    document = {
        "v": 2,
        "method": "mask",
        "bits": bits,
        "block": 8,
        "keep": 0.5,
        "base": None,
        "digest": b"\x00" * 32,
        "spec": [[name, list(shape)] for name, shape in _FUZZ_SPEC],
        "index": ["seeded", nnz, struct.pack("<Q2d", seed, density, 1.0)],
        "values": bytes(values_len),
        "scales": bytes(4 * max(1, math.ceil(max(nnz, 0) / 8)) if bits != 32 else 0),
    }
    with contextlib.suppress(PayloadError):
        apply_payload(read_payload(pack(document)), None)
