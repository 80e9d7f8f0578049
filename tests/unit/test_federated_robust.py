"""Robust rules: norm bounding, coordinate-wise median, trimmed mean and multi-Krum."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federated.errors import NumericsError, ShapeError
from federated.params import Params, clip_update, flatten
from federated.robust import (
    CoordinateMedian,
    MultiKrum,
    NormBounded,
    RobustRule,
    TrimmedMean,
    krum_scores,
    multi_krum_select,
    trimmed_mean,
    weighted_median,
)
from federated.strategy import FedAvg, Strategy, Update

RNG = np.random.default_rng(0)
PROPERTY = settings(database=None, deadline=None, max_examples=150)


def _model(d: int) -> Params:
    return {"w": np.zeros(d, np.float32)}


def _updates(rows: np.ndarray, weights: Sequence[int] | None = None) -> list[Update]:
    counts = [1] * len(rows) if weights is None else list(weights)
    return [
        Update({"w": np.asarray(r, np.float32)}, int(n), i)
        for i, (r, n) in enumerate(zip(rows, counts, strict=True))
    ]


def _aggregate(
    rule: Strategy, rows: np.ndarray, weights: Sequence[int] | None = None
) -> np.ndarray:
    return flatten(rule.aggregate(_model(rows.shape[1]), _updates(rows, weights), RNG))


# --- norm bounding ---------------------------------------------------------------------------


def test_norm_bounded_fedavg_is_fedavg_of_clipped_updates() -> None:
    # Prepare
    rows = np.random.default_rng(1).standard_normal((6, 5)) * np.arange(1, 7)[:, None]
    weights = [3, 1, 4, 1, 5, 9]
    clipped = np.stack([flatten(clip_update({"w": r.astype(np.float32)}, 2.0)[0]) for r in rows])
    # Execute
    got = _aggregate(NormBounded(FedAvg(), 2.0), rows, weights)
    # Assert
    np.testing.assert_allclose(got, _aggregate(FedAvg(), clipped, weights), rtol=1e-6)
    assert np.linalg.norm(got) <= 2.0 + 1e-6


def test_norm_bounded_inherits_the_inner_rules_memory_contract() -> None:
    # Prepare / Execute
    streaming = NormBounded(FedAvg(), 1.0)
    bounded = NormBounded(CoordinateMedian(max_updates=3), 1.0)
    # Assert
    assert not streaming.needs_all_updates
    assert streaming.max_updates is None
    assert bounded.needs_all_updates
    assert bounded.max_updates == 3
    with pytest.raises(NumericsError):
        _aggregate(bounded, np.ones((4, 2)))


def test_norm_bounded_rejects_a_non_positive_bound() -> None:
    with pytest.raises(NumericsError):
        NormBounded(FedAvg(), 0.0)


# --- median and trimmed mean by hand ---------------------------------------------------------


def test_median_by_hand_unweighted_and_weighted() -> None:
    # Prepare
    rows = np.array([[1.0, -3.0], [10.0, 0.0], [100.0, 5.0]])
    # Execute / Assert: counting updates ignores the claimed sizes ...
    np.testing.assert_allclose(_aggregate(CoordinateMedian(), rows, [1, 1, 5]), [10.0, 0.0])
    # ... weighting lets the third (5 of 7 examples) decide
    np.testing.assert_allclose(
        _aggregate(CoordinateMedian(weighted=True), rows, [1, 1, 5]), [100.0, 5.0]
    )


def test_weighted_median_takes_the_midpoint_at_exactly_half() -> None:
    # 0 carries weight 2 of 4: every point in [0, 10] minimises the weighted L1 loss
    got = weighted_median(np.array([[0.0], [10.0], [20.0]]), np.array([2.0, 1.0, 1.0]))
    np.testing.assert_allclose(got, [5.0])


def test_trimmed_mean_by_hand() -> None:
    # Prepare
    rows = np.array([[-100.0], [1.0], [2.0], [3.0], [1000.0]])
    # Execute / Assert: beta 0.2 of 5 drops one from each end
    np.testing.assert_allclose(_aggregate(TrimmedMean(0.2), rows), [2.0])
    np.testing.assert_allclose(_aggregate(TrimmedMean(0.2, weighted=True), rows), [2.0])


def test_weighted_trimmed_mean_splits_a_straddling_update() -> None:
    # Weights 3 and 1 (total 4), beta 0.1: keep mass [0.4, 3.6], i.e. 2.6 of 0 and 0.6 of 10
    got = trimmed_mean(np.array([[0.0], [10.0]]), np.array([3.0, 1.0]), 0.1)
    np.testing.assert_allclose(got, [6.0 / 3.2])


def test_trimmed_mean_without_trimming_is_the_mean() -> None:
    # Prepare
    rows = np.random.default_rng(2).standard_normal((7, 4))
    weights = [5, 1, 2, 8, 1, 1, 3]
    # Execute / Assert
    np.testing.assert_allclose(_aggregate(TrimmedMean(0.0), rows), rows.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        _aggregate(TrimmedMean(0.0, weighted=True), rows, weights),
        _aggregate(FedAvg(), rows, weights),
        rtol=1e-5,
    )


# --- multi-Krum by hand ----------------------------------------------------------------------


def test_krum_scores_and_selection_by_hand() -> None:
    # Prepare: 1-D points, f = 0, so each score sums the 2 nearest squared distances
    rows = np.array([[0.0], [1.0], [3.0], [100.0]])
    # Execute
    scores = krum_scores(rows, 0)
    # Assert: 0 -> 1 + 9, 1 -> 1 + 4, 3 -> 4 + 9, 100 -> 97² + 99²
    np.testing.assert_allclose(scores, [10.0, 5.0, 13.0, 97.0**2 + 99.0**2])
    assert list(multi_krum_select(rows, 0, 3)) == [1, 0, 2]
    np.testing.assert_allclose(_aggregate(MultiKrum(0, 1), rows), [1.0])  # Krum
    np.testing.assert_allclose(_aggregate(MultiKrum(0, 3, weighted=False), rows), [4.0 / 3.0])
    # Weights average the selected only; the outlier's 100 claimed examples buy it nothing
    np.testing.assert_allclose(_aggregate(MultiKrum(0, 3), rows, [1, 2, 1, 100]), [1.25])


def test_multi_krum_defaults_to_n_minus_f() -> None:
    rows = np.array([[0.0], [1.0], [2.0], [3.0], [50.0], [-60.0]])
    got = _aggregate(MultiKrum(num_byzantine=2, weighted=False), rows)
    np.testing.assert_allclose(got, [1.5])


@pytest.mark.parametrize(
    ("f", "m"), [(2, None), (1, 5), (1, 0), (-1, None)], ids=["n<=f+2", "m>n", "m=0", "f<0"]
)
def test_multi_krum_rejects_impossible_settings(f: int, m: int | None) -> None:
    with pytest.raises(NumericsError):
        _aggregate(MultiKrum(f, m), np.eye(4))


# --- the contract shared by the rules that need all updates ----------------------------------

RULES: list[Callable[[int], RobustRule]] = [
    lambda k: CoordinateMedian(max_updates=k),
    lambda k: CoordinateMedian(weighted=True, max_updates=k),
    lambda k: TrimmedMean(0.2, max_updates=k),
    lambda k: TrimmedMean(0.2, weighted=True, max_updates=k),
    lambda k: MultiKrum(1, max_updates=k),
]
RULE_IDS = ["median", "wmedian", "trimmed", "wtrimmed", "krum"]


@pytest.mark.parametrize("make", RULES, ids=RULE_IDS)
def test_rules_bound_their_memory_by_max_updates(make: Callable[[int], RobustRule]) -> None:
    # Prepare
    rows = np.random.default_rng(3).standard_normal((6, 3))
    # Execute / Assert
    assert make(6).needs_all_updates
    _aggregate(make(6), rows)
    with pytest.raises(NumericsError, match="max_updates=5"):
        _aggregate(make(5), rows)


@pytest.mark.parametrize("make", RULES, ids=RULE_IDS)
def test_rules_reject_bad_updates(make: Callable[[int], RobustRule]) -> None:
    rule = make(100)
    rows = np.ones((5, 2))
    with pytest.raises(NumericsError):
        _aggregate(rule, np.vstack([rows, [[np.nan, 0.0]]]))
    with pytest.raises(NumericsError):
        _aggregate(rule, rows, [1, 1, 0, 1, 1])
    with pytest.raises(NumericsError):
        _aggregate(rule, np.ones((0, 2)))
    with pytest.raises(ShapeError):
        rule.aggregate(_model(2), [Update({"v": np.ones(2, np.float32)}, 1)] * 5, RNG)


def test_rules_scale_their_step_by_the_server_lr() -> None:
    rows = np.array([[1.0], [2.0], [9.0]])
    np.testing.assert_allclose(_aggregate(CoordinateMedian(server_lr=0.5), rows), [1.0])


@pytest.mark.parametrize("beta", [-0.1, 0.5])
def test_trimmed_mean_rejects_bad_beta(beta: float) -> None:
    with pytest.raises(NumericsError):
        TrimmedMean(beta)


# --- properties ------------------------------------------------------------------------------

HONEST = st.floats(-1e3, 1e3, width=32)
HOSTILE = st.floats(-1e6, 1e6, width=32)


def _within(got: np.ndarray, honest: np.ndarray) -> bool:
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    slack = 1e-5 * np.maximum(1.0, np.abs(honest).max(axis=0))  # float32 rounding of the mean
    return bool(np.all(got >= lo - slack) and np.all(got <= hi + slack))


@st.composite
def _attacked(draw: st.DrawFn, max_bad: Callable[[int], int]) -> tuple[np.ndarray, np.ndarray]:
    """(honest rows, hostile rows) for n in [1, 15] with at most max_bad(n) hostile ones."""
    n = draw(st.integers(1, 15))
    d = draw(st.integers(1, 4))
    bad = draw(st.integers(0, max_bad(n)))
    honest = draw(hnp.arrays(np.float32, (n - bad, d), elements=HONEST))
    hostile = draw(hnp.arrays(np.float32, (bad, d), elements=HOSTILE))
    return honest, hostile


@PROPERTY
@given(rows=_attacked(lambda n: (n - 1) // 2))
def test_median_stays_within_the_honest_range(rows: tuple[np.ndarray, np.ndarray]) -> None:
    honest, hostile = rows
    assert _within(_aggregate(CoordinateMedian(), np.vstack([honest, hostile])), honest)


@PROPERTY
@given(rows=_attacked(lambda n: (n - 1) // 2), data=st.data())
def test_weighted_median_stays_within_the_honest_range_below_half_the_weight(
    rows: tuple[np.ndarray, np.ndarray], data: st.DataObject
) -> None:
    honest, hostile = rows
    weights = data.draw(st.lists(st.integers(1, 100), min_size=len(honest) + len(hostile)))
    weights = weights[: len(honest) + len(hostile)]
    assume(2 * sum(weights[len(honest) :]) < sum(weights))
    got = _aggregate(CoordinateMedian(weighted=True), np.vstack([honest, hostile]), weights)
    assert _within(got, honest)


@PROPERTY
@given(beta=st.floats(0.05, 0.45), data=st.data())
def test_trimmed_mean_stays_within_the_honest_range(beta: float, data: st.DataObject) -> None:
    honest, hostile = data.draw(_attacked(lambda n: int(np.floor(beta * n + 1e-9))))
    assert _within(_aggregate(TrimmedMean(beta), np.vstack([honest, hostile])), honest)


@PROPERTY
@given(data=st.data())
def test_multi_krum_never_selects_an_extreme_outlier(data: st.DataObject) -> None:
    # Prepare: f tolerated, n > 2f + 2; up to f colluding outliers far from the honest box
    f = data.draw(st.integers(0, 4))
    n = data.draw(st.integers(2 * f + 3, 2 * f + 10))
    d = data.draw(st.integers(1, 6))
    bad = data.draw(st.integers(0, f))
    honest = data.draw(hnp.arrays(np.float64, (n - bad, d), elements=st.floats(-1, 1)))
    sign = data.draw(hnp.arrays(np.float64, (1, d), elements=st.sampled_from([-1.0, 1.0])))
    size = data.draw(hnp.arrays(np.float64, (bad, d), elements=st.floats(1e3, 1e4)))
    colluding = data.draw(st.booleans())
    hostile = sign * (size[:1].repeat(bad, axis=0) if colluding and bad else size)
    rows = np.vstack([honest, hostile])
    m = data.draw(st.integers(1, n - f))
    # Execute
    chosen = multi_krum_select(rows, f, m)
    # Assert
    assert np.all(chosen < n - bad)


@PROPERTY
@given(
    rows=hnp.arrays(np.float32, st.tuples(st.integers(4, 12), st.integers(1, 4)), elements=HONEST),
    data=st.data(),
)
def test_rules_are_permutation_invariant(rows: np.ndarray, data: st.DataObject) -> None:
    # Prepare
    n = rows.shape[0]
    weights = data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    order = np.array(data.draw(st.permutations(range(n))))
    for make in RULES:
        # Execute
        a = _aggregate(make(n), rows, weights)
        b = _aggregate(make(n), rows[order], [weights[i] for i in order])
        # Assert
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)


@PROPERTY
@given(
    rows=hnp.arrays(np.float64, st.tuples(st.integers(1, 9), st.integers(1, 3)), elements=HONEST)
)
def test_weighted_median_with_equal_weights_is_numpys_median(rows: np.ndarray) -> None:
    got = weighted_median(rows, np.full(rows.shape[0], 7.0))
    np.testing.assert_allclose(got, np.median(rows, axis=0))
