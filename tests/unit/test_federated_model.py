"""Tests for federated.model: shapes, gradient check, SGD training."""

import numpy as np
import pytest

from federated import (
    NumericsError,
    ShapeError,
    TrainStats,
    forward_logits,
    init_mlp,
    loss_and_grads,
    predict,
    train_local,
)


def _blobs(rng: np.random.Generator, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated Gaussian blobs in 5-D."""
    y = rng.integers(0, 3, size=n)
    centers = np.eye(3, 5) * 3.0
    x = (centers[y] + rng.standard_normal((n, 5))).astype(np.float32)
    return x, y.astype(np.int64)


def test_init_mlp_names_shapes_and_scale() -> None:
    # Execute
    params = init_mlp((64, 32, 10), np.random.default_rng(0))
    # Assert
    assert list(params) == ["w0", "b0", "w1", "b1"]
    assert params["w0"].shape == (64, 32)
    assert params["b1"].shape == (10,)
    assert all(v.dtype == np.float32 for v in params.values())
    assert not params["b0"].any()
    assert params["w0"].std() == pytest.approx(np.sqrt(2 / 64), rel=0.1)


def test_init_mlp_is_deterministic_given_rng() -> None:
    a = init_mlp((4, 3, 2), np.random.default_rng(7))
    b = init_mlp((4, 3, 2), np.random.default_rng(7))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_init_mlp_rejects_bad_sizes() -> None:
    with pytest.raises(ShapeError):
        init_mlp((4,), np.random.default_rng(0))
    with pytest.raises(ShapeError):
        init_mlp((4, 0, 2), np.random.default_rng(0))


def test_forward_and_predict_shapes() -> None:
    params = init_mlp((5, 8, 3), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    assert forward_logits(params, x).shape == (7, 3)
    pred = predict(params, x)
    assert pred.shape == (7,)
    assert pred.dtype == np.int64
    with pytest.raises(ShapeError):
        forward_logits(params, x[:, :4])


def test_gradients_match_finite_differences() -> None:
    # Prepare: float64 copies so central differences are accurate.
    rng = np.random.default_rng(3)
    params = {k: v.astype(np.float64) for k, v in init_mlp((4, 6, 5, 3), rng).items()}
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    x = rng.standard_normal((9, 4))
    y = rng.integers(0, 3, size=9)
    eps = 1e-6
    # Execute
    _, grads = loss_and_grads(params, x, y)
    # Assert
    assert list(grads) == list(params)
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            orig = value[idx]
            value[idx] = orig + eps
            plus, _ = loss_and_grads(params, x, y)
            value[idx] = orig - eps
            minus, _ = loss_and_grads(params, x, y)
            value[idx] = orig
            numeric[idx] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-4, atol=1e-7, err_msg=name)


def test_loss_of_uniform_logits_is_log_classes() -> None:
    params = {k: np.zeros_like(v) for k, v in init_mlp((4, 3), np.random.default_rng(0)).items()}
    loss, _ = loss_and_grads(params, np.ones((5, 4), dtype=np.float32), np.array([0, 1, 2, 0, 1]))
    assert loss == pytest.approx(np.log(3), rel=1e-6)


def test_loss_rejects_out_of_range_labels() -> None:
    params = init_mlp((4, 3), np.random.default_rng(0))
    with pytest.raises(NumericsError):
        loss_and_grads(params, np.ones((2, 4), dtype=np.float32), np.array([0, 3]))
    with pytest.raises(ShapeError):
        loss_and_grads(params, np.ones((2, 4), dtype=np.float32), np.array([0]))


def test_train_local_learns_and_does_not_mutate_input() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    x, y = _blobs(rng)
    params = init_mlp((5, 16, 3), rng)
    before = {k: v.copy() for k, v in params.items()}
    # Execute
    trained, stats = train_local(params, x, y, epochs=20, batch_size=16, lr=0.1, rng=rng)
    # Assert
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
        assert trained[k].dtype == np.float32
    assert isinstance(stats, TrainStats)
    assert stats.num_examples == 120
    assert stats.accuracy > 0.9
    assert stats.loss < loss_and_grads(params, x, y)[0]
    assert stats.accuracy == pytest.approx(float(np.mean(predict(trained, x) == y)))


def test_train_local_is_deterministic_given_rng() -> None:
    x, y = _blobs(np.random.default_rng(0))
    params = init_mlp((5, 8, 3), np.random.default_rng(1))
    a, _ = train_local(params, x, y, epochs=2, batch_size=8, lr=0.1, rng=np.random.default_rng(2))
    b, _ = train_local(params, x, y, epochs=2, batch_size=8, lr=0.1, rng=np.random.default_rng(2))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_prox_term_keeps_weights_near_start() -> None:
    # Prepare
    x, y = _blobs(np.random.default_rng(0))
    params = init_mlp((5, 8, 3), np.random.default_rng(1))

    def drift(mu: float) -> float:
        trained, _ = train_local(
            params, x, y, epochs=5, batch_size=8, lr=0.1, rng=np.random.default_rng(2), prox_mu=mu
        )
        return float(sum(np.sum((trained[k] - params[k]) ** 2) for k in params))

    # Execute / Assert
    assert drift(5.0) < drift(0.0)


@pytest.mark.parametrize(
    ("epochs", "batch_size", "lr", "mu"),
    [(0, 8, 0.1, 0.0), (1, 0, 0.1, 0.0), (1, 8, 0.0, 0.0), (1, 8, 0.1, -1.0)],
)
def test_train_local_rejects_bad_settings(
    epochs: int, batch_size: int, lr: float, mu: float
) -> None:
    x, y = _blobs(np.random.default_rng(0), n=10)
    params = init_mlp((5, 3), np.random.default_rng(1))
    with pytest.raises(NumericsError):
        train_local(
            params,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            rng=np.random.default_rng(0),
            prox_mu=mu,
        )


def test_train_local_raises_when_training_diverges() -> None:
    x, y = _blobs(np.random.default_rng(0), n=40)
    params = init_mlp((5, 3), np.random.default_rng(1))
    with pytest.raises(NumericsError), np.errstate(all="ignore"):
        train_local(
            params, x * 1e30, y, epochs=3, batch_size=8, lr=1e10, rng=np.random.default_rng(0)
        )
