"""Tests for federated.params: flatten/unflatten, digest, algebra, finiteness."""

import numpy as np
import pytest

import federated
from federated import (
    NumericsError,
    PayloadError,
    ShapeError,
    add,
    check_finite,
    digest,
    flatten,
    spec_of,
    sub,
    unflatten,
    zeros_like,
)


def _params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w0": rng.standard_normal((3, 4)).astype(np.float32),
        "b0": rng.standard_normal(4).astype(np.float32),
        "s": np.array(2.5, dtype=np.float32),
    }


def test_flatten_unflatten_roundtrip() -> None:
    # Prepare
    params = _params()
    # Execute
    vec = flatten(params)
    back = unflatten(vec, spec_of(params))
    # Assert
    assert vec.dtype == np.float32
    assert vec.shape == (17,)
    assert list(back) == ["w0", "b0", "s"]
    for name in params:
        np.testing.assert_array_equal(back[name], params[name])
        assert back[name].dtype == np.float32


def test_unflatten_rejects_wrong_size() -> None:
    spec = spec_of(_params())
    with pytest.raises(ShapeError):
        unflatten(np.zeros(16, dtype=np.float32), spec)
    with pytest.raises(ShapeError):
        unflatten(np.zeros((17, 1), dtype=np.float32), spec)


def test_spec_of_lists_names_and_shapes_in_order() -> None:
    assert spec_of(_params()) == (("w0", (3, 4)), ("b0", (4,)), ("s", ()))


def test_digest_is_stable_and_content_addressed() -> None:
    # Prepare
    a = _params()
    b = {k: v.copy() for k, v in a.items()}
    reshaped = dict(a, w0=a["w0"].reshape(4, 3))
    renamed = {("x" if k == "s" else k): v for k, v in a.items()}
    changed = dict(a, s=np.array(2.5000002, dtype=np.float32))
    # Execute / Assert
    assert digest(a) == digest(b)
    assert digest(a) == digest({k: v.astype(np.float64) for k, v in a.items()})
    assert len(digest(a)) == 64
    assert len({digest(a), digest(reshaped), digest(renamed), digest(changed)}) == 4


def test_digest_known_value_for_empty_params() -> None:
    # Pins the encoding: sha256 of the little-endian uint64 tensor count 0.
    assert digest({}) == "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"


def test_add_sub_zeros_like() -> None:
    # Prepare
    a = _params()
    b = {k: np.ones_like(v) for k, v in a.items()}
    # Execute
    total = add(a, b)
    back = sub(total, b)
    zeros = zeros_like(a)
    # Assert
    for k in a:
        np.testing.assert_allclose(back[k], a[k], rtol=1e-6, atol=1e-6)
        assert total[k].dtype == np.float32
        assert zeros[k].shape == a[k].shape
        assert not zeros[k].any()


def test_add_rejects_mismatched_specs() -> None:
    a = _params()
    with pytest.raises(ShapeError):
        add(a, dict(a, w0=np.zeros((4, 3), dtype=np.float32)))


def test_check_finite_names_the_tensor() -> None:
    bad = dict(_params(), b0=np.array([0.0, np.nan, 1.0, 2.0], dtype=np.float32))
    with pytest.raises(NumericsError, match="b0"):
        check_finite(bad)
    check_finite(_params())


def test_error_hierarchy_and_reason() -> None:
    err = PayloadError("bad digest")
    assert isinstance(err, NumericsError)
    assert isinstance(err, ValueError)
    assert issubclass(ShapeError, NumericsError)
    assert err.reason == "bad digest"


def test_package_exports_everything_in_all() -> None:
    for name in federated.__all__:
        assert hasattr(federated, name), name
