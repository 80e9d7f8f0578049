"""Server optimizers (FedAvgM, FedAdam, FedYogi) and FedProx's proximal term on the client."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import overload

import numpy as np
import pytest

from federated.errors import NumericsError, ShapeError
from federated.model import init_mlp, loss_and_grads, train_local
from federated.params import Params, flatten, spec_of, sub
from federated.strategies import FedAdam, FedAvgM, FedYogi, ServerOptimizer
from federated.strategy import FedAvg, Strategy, Update, weighted_mean_delta

RNG = np.random.default_rng(0)


def _model(values: Sequence[float]) -> Params:
    return {"w": np.asarray(values, dtype=np.float32)}


def _updates(*rows: tuple[Sequence[float], int]) -> list[Update]:
    return [Update(_model(v), n, i) for i, (v, n) in enumerate(rows)]


def _random_updates(seed: int, n: int = 5) -> list[Update]:
    rng = np.random.default_rng(seed)
    return [
        Update(
            {
                "w0": rng.standard_normal((3, 2)).astype(np.float32),
                "b0": rng.standard_normal(2).astype(np.float32),
            },
            int(rng.integers(1, 50)),
            i,
        )
        for i in range(n)
    ]


class _OnePass(Sequence[Update]):
    """Updates that may be read in one forward pass only, as a streaming server would."""

    def __init__(self, updates: list[Update]) -> None:
        self._updates = updates
        self.passes = 0

    def __len__(self) -> int:
        return len(self._updates)

    @overload
    def __getitem__(self, index: int) -> Update: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Update]: ...

    def __getitem__(self, index: int | slice) -> Update | Sequence[Update]:
        raise AssertionError("random access: the strategy is not streaming")

    def __iter__(self) -> Iterator[Update]:
        self.passes += 1
        if self.passes > 1:
            raise AssertionError("second pass: the strategy is not streaming")
        return iter(self._updates)


# --- the weighted mean of updates (FedAvg's step, the optimizers' pseudo-gradient) ------------


def test_weighted_mean_delta_is_the_example_weighted_mean() -> None:
    # Prepare
    updates = _random_updates(1)
    rows = np.stack([flatten(u.delta).astype(np.float64) for u in updates])
    weights = np.array([u.num_examples for u in updates], dtype=np.float64)
    # Execute
    got = weighted_mean_delta(updates, spec_of(updates[0].delta))
    # Assert
    np.testing.assert_allclose(got, np.average(rows, axis=0, weights=weights), rtol=1e-12)


def test_weighted_mean_delta_rejects_a_mismatching_spec_and_no_updates() -> None:
    g = {"a": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
    swapped = {"b": np.zeros(1, np.float32), "a": np.zeros(2, np.float32)}
    with pytest.raises(ShapeError):
        weighted_mean_delta([Update(swapped, 1)], spec_of(g))
    with pytest.raises(NumericsError):
        weighted_mean_delta([], spec_of(g))


@pytest.mark.parametrize("make", [FedAvgM, FedAdam, FedYogi])
def test_optimizers_read_updates_in_one_pass(make: Callable[[], ServerOptimizer]) -> None:
    # Prepare
    updates = _OnePass(_random_updates(2, n=20))
    # Execute
    make().aggregate(_random_updates(3, n=1)[0].delta, updates, RNG)
    # Assert
    assert updates.passes == 1


# --- FedAvgM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_fedavgm_without_momentum_is_fedavg(server_lr: float) -> None:
    # Prepare
    a: Params = _random_updates(10, n=1)[0].delta
    b: Params = {k: v.copy() for k, v in a.items()}
    avgm: Strategy = FedAvgM(server_lr=server_lr, momentum=0.0)
    avg: Strategy = FedAvg(server_lr=server_lr)
    # Execute: several iterations, so any leftover state would show
    for it in range(4):
        updates = _random_updates(20 + it)
        a = avgm.aggregate(a, updates, RNG)
        b = avg.aggregate(b, updates, RNG)
    # Assert
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_fedavgm_steps_by_hand() -> None:
    # Prepare: Δ1 = (1*[1, 2] + 3*[1, 2]) / 4 = [1, 2]; Δ2 = [0, -2]
    opt = FedAvgM(server_lr=0.5, momentum=0.5)
    x0 = _model([10.0, 10.0])
    # Execute
    x1 = opt.aggregate(x0, _updates(([1.0, 2.0], 1), ([1.0, 2.0], 3)), RNG)
    x2 = opt.aggregate(x1, _updates(([0.0, -2.0], 7)), RNG)
    # Assert: v1 = [1, 2], x1 = x0 + 0.5 v1; v2 = 0.5 v1 + Δ2 = [0.5, -1], x2 = x1 + 0.5 v2
    np.testing.assert_allclose(x1["w"], [10.5, 11.0])
    np.testing.assert_allclose(opt.velocity, [0.5, -1.0])
    np.testing.assert_allclose(x2["w"], [10.75, 10.5])
    assert opt.iterations == 2


# --- FedAdam / FedYogi -----------------------------------------------------------------------


def test_fedadam_steps_by_hand() -> None:
    # Prepare: b1 = 0.5, b2 = 0.75, tau = 1 (so v0 = 1), eta = 1
    opt = FedAdam(server_lr=1.0, beta1=0.5, beta2=0.75, tau=1.0)
    x0 = _model([0.0, 0.0])
    # Execute: Δ1 = (3 * [3, 0.5] + 1 * [-1, 0.5]) / 4 = [2, 0.5]; then Δ2 = 0
    x1 = opt.aggregate(x0, _updates(([3.0, 0.5], 3), ([-1.0, 0.5], 1)), RNG)
    m1, v1 = opt.m.copy(), opt.v.copy()
    x2 = opt.aggregate(x1, _updates(([0.0, 0.0], 4)), RNG)
    # Assert: m1 = 0.5 Δ1 = [1, 0.25]; v1 = 0.75 + 0.25 Δ1² = [1.75, 0.8125]
    np.testing.assert_allclose(m1, [1.0, 0.25])
    np.testing.assert_allclose(v1, [1.75, 0.8125])
    step1 = np.array([1.0 / (np.sqrt(1.75) + 1.0), 0.25 / (np.sqrt(0.8125) + 1.0)])
    np.testing.assert_allclose(x1["w"], step1, rtol=1e-6)
    # Δ2 = 0: m2 = 0.5 m1, v2 = 0.75 v1, and the model keeps moving on momentum alone
    np.testing.assert_allclose(opt.m, [0.5, 0.125])
    np.testing.assert_allclose(opt.v, [1.3125, 0.609375])
    step2 = np.array([0.5 / (np.sqrt(1.3125) + 1.0), 0.125 / (np.sqrt(0.609375) + 1.0)])
    np.testing.assert_allclose(x2["w"], step1 + step2, rtol=1e-6)


def test_fedyogi_steps_by_hand() -> None:
    # Prepare: as for Adam; Yogi's v moves by (1 - b2) Δ² towards Δ², sign-controlled
    opt = FedYogi(server_lr=1.0, beta1=0.5, beta2=0.75, tau=1.0)
    x0 = _model([0.0, 0.0])
    # Execute
    x1 = opt.aggregate(x0, _updates(([2.0, 0.5], 3)), RNG)
    v1 = opt.v.copy()
    x2 = opt.aggregate(x1, _updates(([0.0, 0.0], 3)), RNG)
    # Assert: Δ1² = [4, 0.25]; v1 = 1 - 0.25 * Δ1² * sign(1 - Δ1²) = [2, 0.9375]
    np.testing.assert_allclose(v1, [2.0, 0.9375])
    step1 = np.array([1.0 / (np.sqrt(2.0) + 1.0), 0.25 / (np.sqrt(0.9375) + 1.0)])
    np.testing.assert_allclose(x1["w"], step1, rtol=1e-6)
    # Δ2 = 0: Yogi leaves v alone (Adam would shrink it), m halves
    np.testing.assert_allclose(opt.v, v1)
    step2 = np.array([0.5 / (np.sqrt(2.0) + 1.0), 0.125 / (np.sqrt(0.9375) + 1.0)])
    np.testing.assert_allclose(x2["w"], step1 + step2, rtol=1e-6)


@pytest.mark.parametrize("make", [FedAvgM, FedAdam, FedYogi])
def test_state_carries_across_calls_and_reset_forgets_it(
    make: Callable[[], ServerOptimizer],
) -> None:
    # Prepare
    g = _random_updates(30, n=1)[0].delta
    first, second = _random_updates(31), _random_updates(32)
    carried = make()
    # Execute
    carried.aggregate(g, first, RNG)
    with_state = carried.aggregate(g, second, RNG)
    fresh = make().aggregate(g, second, RNG)
    carried.reset()
    after_reset = carried.aggregate(g, second, RNG)
    # Assert
    assert not np.allclose(flatten(with_state), flatten(fresh))
    np.testing.assert_array_equal(flatten(after_reset), flatten(fresh))


@pytest.mark.parametrize("make", [FedAvgM, FedAdam, FedYogi])
def test_optimizers_refuse_a_changed_model(make: Callable[[], ServerOptimizer]) -> None:
    opt = make()
    opt.aggregate(_model([0.0, 0.0]), _updates(([1.0, 1.0], 1)), RNG)
    with pytest.raises(ShapeError):
        opt.aggregate(_model([0.0, 0.0, 0.0]), _updates(([1.0, 1.0, 1.0], 1)), RNG)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvgM(server_lr=0.0),
        lambda: FedAvgM(momentum=1.0),
        lambda: FedAvgM(momentum=-0.1),
        lambda: FedAdam(beta1=1.0),
        lambda: FedAdam(beta2=-0.5),
        lambda: FedYogi(tau=0.0),
        lambda: FedYogi(server_lr=-1.0),
    ],
)
def test_optimizers_reject_bad_settings(make: Callable[[], ServerOptimizer]) -> None:
    with pytest.raises(NumericsError):
        make()


def test_adaptive_step_is_bounded_per_coordinate() -> None:
    # Prepare: a huge pseudo-gradient; |m / (sqrt(v) + tau)| <= (1 - b1) / sqrt(1 - b2)
    opt = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    # Execute
    x1 = opt.aggregate(_model([0.0, 0.0]), _updates(([1e6, -1e-6], 1)), RNG)
    # Assert
    assert np.all(np.abs(x1["w"]) <= 0.1 * 0.1 / np.sqrt(0.01) + 1e-6)


# --- FedProx's proximal term (federated.model.train_local) -----------------------------------


def _blobs(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, n)
    x = (rng.standard_normal((n, 4)) + 2.0 * y[:, None]).astype(np.float32)
    return x, y.astype(np.int64)


def test_prox_term_is_mu_times_the_distance_to_the_start() -> None:
    # Prepare: full-batch steps, so the reference below needs no shuffling
    x, y = _blobs()
    start = init_mlp((4, 6, 3), np.random.default_rng(1))
    mu, lr = 0.7, 0.2
    # Execute
    trained, _ = train_local(
        start, x, y, epochs=3, batch_size=len(y), lr=lr, rng=np.random.default_rng(2), prox_mu=mu
    )
    # Assert: w <- w - lr * (grad f(w) + mu (w - w0)), by hand
    ref = {k: v.astype(np.float64) for k, v in start.items()}
    for _ in range(3):
        _, grads = loss_and_grads(ref, x, y)
        ref = {k: ref[k] - lr * (grads[k] + mu * (ref[k] - start[k])) for k in ref}
    for k in start:
        np.testing.assert_allclose(trained[k], ref[k], rtol=1e-4, atol=1e-5)


def test_prox_term_keeps_the_local_model_closer_to_the_start() -> None:
    # Prepare
    x, y = _blobs(60)
    start = init_mlp((4, 6, 3), np.random.default_rng(1))

    def drift(mu: float) -> float:
        trained, _ = train_local(
            start, x, y, epochs=10, batch_size=8, lr=0.1, rng=np.random.default_rng(3), prox_mu=mu
        )
        return float(np.linalg.norm(flatten(sub(trained, start))))

    # Execute
    drifts = [drift(mu) for mu in (0.0, 0.1, 1.0, 5.0)]
    # Assert: monotone in mu, and a strong pull keeps the model near the start
    assert drifts == sorted(drifts, reverse=True)
    assert drifts[-1] < 0.5 * drifts[0]
