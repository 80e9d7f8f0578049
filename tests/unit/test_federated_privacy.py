"""DP-FedAvg: clipping bound, noise scale, distributed shares and adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federated.adaptive_clipping import AdaptiveClip, AdaptiveClipDP, update_noise_multiplier
from federated.errors import NumericsError, ShapeError
from federated.params import Params, clip_update, flatten, l2_norm
from federated.privacy import CentralDP, DistributedDP
from federated.simulation import simulate
from federated.strategy import FedAvg, Strategy, Update
from federated.synthetic import synthetic_task

_finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def _params(draw: st.DrawFn) -> Params:
    n = draw(st.integers(1, 3))
    out: Params = {}
    for i in range(n):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=6))
        out[f"t{i}"] = draw(hnp.arrays(np.float32, shape, elements=_finite))
    return out


def _zeros_updates(size: int, count: int) -> list[Update]:
    return [Update({"w": np.zeros(size, np.float32)}, 1, i) for i in range(count)]


@settings(max_examples=200, deadline=None)
@given(_params(), st.floats(1e-3, 1e4))
def test_clip_bound_holds_and_keeps_direction(delta: Params, clip_norm: float) -> None:
    # Execute
    clipped, was_clipped = clip_update(delta, clip_norm)

    # Assert: never above C, scaled only when above, and always by one positive factor
    norm = l2_norm(delta)
    assert l2_norm(clipped) <= clip_norm
    assert was_clipped == (norm > clip_norm)
    if not was_clipped:
        assert clipped is delta
    else:
        np.testing.assert_allclose(
            flatten(clipped), flatten(delta) * (clip_norm / norm), rtol=1e-5, atol=1e-30
        )


def test_clip_rejects_bad_inputs() -> None:
    with pytest.raises(NumericsError):
        clip_update({"w": np.ones(2, np.float32)}, 0.0)
    with pytest.raises(NumericsError):
        clip_update({"w": np.array([np.inf, 1.0], np.float32)}, 1.0)


def test_central_noise_std_is_zc_over_m() -> None:
    # Prepare: all-zero updates, so the new model is the noise on the mean alone
    size, m, z, c = 200_000, 10, 1.3, 0.7
    strategy = CentralDP(None, noise_multiplier=z, clip_norm=c, expected_clients=m)
    g = {"w": np.zeros(size, np.float32)}

    # Execute
    out = flatten(strategy.aggregate(g, _zeros_updates(size, m), np.random.default_rng(0)))

    # Assert: sample std of 2e5 normals is within 0.5% of sigma at > 3 standard errors
    assert abs(out.std() / (z * c / m) - 1) < 0.005
    assert abs(out.mean()) < 4 * (z * c / m) / math.sqrt(size)


def test_central_noises_an_empty_cohort_and_rejects_misfits() -> None:
    # Prepare: under Poisson sampling nobody may turn up; the release must still be noised
    size, z, c, m = 10_000, 2.0, 1.0, 5
    strategy = CentralDP(None, noise_multiplier=z, clip_norm=c, expected_clients=m)
    g = {"w": np.ones(size, np.float32)}

    # Execute
    out = flatten(strategy.aggregate(g, [], np.random.default_rng(9))) - 1.0

    # Assert
    assert abs(out.std() / (z * c / m) - 1) < 0.03
    with pytest.raises(ShapeError):
        strategy.aggregate(g, _zeros_updates(size + 1, 1), np.random.default_rng(0))


def test_central_without_noise_is_the_uniform_mean_of_clipped_updates() -> None:
    # Prepare: example counts must not matter; the divisor is the expected count (4), not 3
    g = {"w": np.array([1.0, 1.0], np.float32)}
    updates = [
        Update({"w": np.array([3.0, 4.0], np.float32)}, 100),  # norm 5 -> clipped to 1
        Update({"w": np.array([0.5, 0.0], np.float32)}, 1),
        Update({"w": np.array([0.0, -0.5], np.float32)}, 7),
    ]
    strategy = CentralDP(None, noise_multiplier=0.0, clip_norm=1.0, expected_clients=4)

    # Execute
    out = strategy.aggregate(g, updates, np.random.default_rng(0))

    # Assert
    clipped_sum = np.array([0.6, 0.8]) + np.array([0.5, 0.0]) + np.array([0.0, -0.5])
    expected = 1.0 + clipped_sum / 4
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
    assert strategy.last_unclipped == 2


def test_central_delegates_the_noisy_mean_to_the_inner_strategy() -> None:
    # Prepare
    g = {"w": np.zeros(2, np.float32)}
    updates = [Update({"w": np.array([0.2, 0.0], np.float32)}, 5)]
    plain = CentralDP(None, noise_multiplier=0.0, clip_norm=1.0, expected_clients=1)
    wrapped = CentralDP(
        FedAvg(server_lr=2.0), noise_multiplier=0.0, clip_norm=1.0, expected_clients=1
    )

    # Execute
    a = plain.aggregate(g, updates, np.random.default_rng(0))
    b = wrapped.aggregate(g, updates, np.random.default_rng(0))

    # Assert
    np.testing.assert_allclose(b["w"], 2 * a["w"])


def test_dp_wrappers_refuse_rules_that_need_every_update() -> None:
    class Robust(FedAvg):
        needs_all_updates = True

    inner: Strategy = Robust()
    with pytest.raises(NumericsError):
        CentralDP(inner, noise_multiplier=1.0, clip_norm=1.0, expected_clients=10)
    with pytest.raises(NumericsError):
        DistributedDP(inner, noise_multiplier=1.0, clip_norm=1.0, expected_clients=10)


def test_distributed_shares_sum_to_the_central_variance() -> None:
    # Prepare
    size, m, z, c = 50_000, 100, 1.1, 2.0
    dp = DistributedDP(None, noise_multiplier=z, clip_norm=c, expected_clients=m)
    rng = np.random.default_rng(1)
    zero = {"w": np.zeros(size, np.float32)}

    # Execute
    shares = [flatten(dp.client_share(zero, rng)).astype(np.float64) for _ in range(m)]
    total = np.sum(shares, axis=0)

    # Assert: one share has std zC/sqrt(m); their sum has the central std zC
    assert abs(shares[0].std() / (z * c / math.sqrt(m)) - 1) < 0.01
    assert abs(total.std() / (z * c) - 1) < 0.01


def test_distributed_server_matches_central_noise_scale() -> None:
    # Prepare
    size, m, z, c = 20_000, 50, 0.8, 1.0
    dp = DistributedDP(None, noise_multiplier=z, clip_norm=c, expected_clients=m)
    rng = np.random.default_rng(2)
    g = {"w": np.zeros(size, np.float32)}
    sent = [Update(dp.client_uplink(u.delta, rng)[0], 1) for u in _zeros_updates(size, m)]

    # Execute
    out = flatten(dp.aggregate(g, sent, rng))

    # Assert: the same std as central DP's zC/m, and the full multiplier was achieved
    assert abs(out.std() / (z * c / m) - 1) < 0.02
    assert dp.last_noise_multiplier == pytest.approx(z)


def test_distributed_without_noise_equals_central_and_tracks_dropouts() -> None:
    # Prepare
    rng = np.random.default_rng(3)
    g = {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}
    raw = [
        Update({"w": rng.normal(size=3).astype(np.float32), "b": np.ones(1, np.float32)}, 9)
        for _ in range(4)
    ]
    dist = DistributedDP(None, noise_multiplier=0.0, clip_norm=0.5, expected_clients=5)
    central = CentralDP(None, noise_multiplier=0.0, clip_norm=0.5, expected_clients=5)
    sent = [Update(dist.client_uplink(u.delta, rng)[0], u.num_examples) for u in raw]

    # Execute
    a = dist.aggregate(g, sent, rng)
    b = central.aggregate(g, raw, rng)

    # Assert
    np.testing.assert_allclose(flatten(a), flatten(b), rtol=1e-6)
    dist.noise_multiplier = 2.0
    dist.aggregate(g, sent, rng)
    assert dist.last_noise_multiplier == pytest.approx(2.0 * math.sqrt(4 / 5))


def test_distributed_dp_runs_inside_simulate() -> None:
    # Prepare
    rng = np.random.default_rng(4)
    task = synthetic_task(1.0, 1.0, 20, rng, max_size=200)
    dp = DistributedDP(None, noise_multiplier=0.0, clip_norm=10.0, expected_clients=10)

    # Execute
    result = simulate(
        task,
        iterations=15,
        clients_per_iteration=10,
        epochs=1,
        batch_size=32,
        lr=0.05,
        rng=rng,
        strategy=dp,
        uplink=dp.client_uplink,
    )

    # Assert: it learns (10 classes: chance is ~0.1), and sends float32 bytes
    assert result.accuracy[-1] > 0.2
    assert result.mean_bytes()[1] == (60 * 10 + 10) * 4


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_adaptive_clip_converges_to_the_target_quantile(quantile: float) -> None:
    # Prepare: update norms are lognormal; 100 clients a round, paper defaults otherwise
    rng = np.random.default_rng(5)
    population = rng.lognormal(0.0, 0.7, 100_000)
    m = 100
    clip = AdaptiveClip(0.1, target_quantile=quantile, learning_rate=0.2, count_stddev=m / 20)

    # Execute
    seen = []
    for _ in range(400):
        norms = rng.choice(population, m)
        clip.update(int(np.sum(norms <= clip.clip_norm)), m, m, rng)
        seen.append(clip.clip_norm)

    # Assert: the clip norm ends where the target fraction of norms lies below it
    settled = float(np.median(seen[-200:]))
    assert abs(np.mean(population <= settled) - quantile) < 0.05


def test_update_noise_multiplier_shares_the_budget_with_the_count() -> None:
    # Prepare
    z, sigma_b = 1.0, 5.0

    # Execute
    z_delta = update_noise_multiplier(z, sigma_b)

    # Assert: the two Gaussian queries compose to exactly multiplier z
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)
    assert z_delta > z
    assert update_noise_multiplier(0.0, 0.0) == 0.0
    with pytest.raises(NumericsError):
        update_noise_multiplier(1.0, 0.5)


def test_adaptive_clip_dp_noises_with_the_norm_it_clipped_with() -> None:
    # Prepare: 40 updates with norms 1..40; the median is about 20
    m, size = 40, 1000
    rng = np.random.default_rng(6)
    directions = rng.normal(size=(m, size))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    updates = [Update({"w": (d * (i + 1)).astype(np.float32)}, 1) for i, d in enumerate(directions)]
    dp = AdaptiveClipDP(None, noise_multiplier=0.0, expected_clients=m, initial_clip_norm=1.0)
    g = {"w": np.zeros(size, np.float32)}

    # Execute
    for _ in range(60):
        dp.aggregate(g, updates, rng)

    # Assert
    assert dp.history[0] == 1.0
    assert 15 < dp.clip_norm < 25
    assert l2_norm(dp.aggregate(g, updates, rng)) <= dp.history[-1]
