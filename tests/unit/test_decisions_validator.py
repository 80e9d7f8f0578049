"""The validator's decisions: the verdict against target and parent, the first version, and
when an iteration's aggregate is scored for the learning curve."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.semver import Version
from services.validator.decisions import (
    FIRST_VERSION,
    curve_point,
    first_candidate,
    score_iteration,
    validation_failure,
)

PROPERTY = settings(database=None, deadline=None)

unit = st.floats(0.0, 1.0)


@pytest.mark.parametrize(
    ("accuracy", "target", "parent", "parent_accuracy", "expected"),
    [
        (0.9, 0.8, None, 0.0, None),
        (0.8, 0.8, None, 0.0, None),  # the target itself passes
        (0.7, 0.8, None, 0.0, "holdout accuracy 0.7000 below target 0.8000"),
        (0.9, 0.8, "1.2.0", 0.91, None),  # within max_regression of the parent
        (0.9, 0.8, "1.2.0", 0.95, "holdout accuracy 0.9000 regresses from parent 1.2.0 (0.9500)"),
        (0.7, 0.8, "1.2.0", 0.95, "holdout accuracy 0.7000 below target 0.8000"),  # target first
        (0.9, 0.8, "", 0.99, None),  # an empty parent is no parent
    ],
)
def test_validation_failure_examples(
    accuracy: float,
    target: float,
    parent: str | None,
    parent_accuracy: float,
    expected: str | None,
) -> None:
    # Prepare: max_regression 0.02

    # Execute
    failure = validation_failure(
        accuracy, target, parent=parent, parent_accuracy=parent_accuracy, max_regression=0.02
    )

    # Assert
    assert failure == expected


@PROPERTY
@given(
    accuracy=unit,
    target=unit,
    parent=st.none() | st.just("1.0.0"),
    parent_accuracy=unit,
    max_regression=st.floats(0.0, 1.0),
)
def test_a_verdict_never_passes_below_target_or_far_below_the_parent(
    accuracy: float,
    target: float,
    parent: str | None,
    parent_accuracy: float,
    max_regression: float,
) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    failure = validation_failure(
        accuracy,
        target,
        parent=parent,
        parent_accuracy=parent_accuracy,
        max_regression=max_regression,
    )

    # Assert
    if accuracy < target:
        assert failure is not None
        assert "below target" in failure
    if failure is None:
        assert accuracy >= target
        assert parent is None or accuracy >= parent_accuracy - max_regression


@PROPERTY
@given(accuracy=unit, target=unit, parent_accuracy=unit, more=unit)
def test_more_accuracy_never_turns_a_pass_into_a_failure(
    accuracy: float, target: float, parent_accuracy: float, more: float
) -> None:
    # Prepare
    def verdict(acc: float) -> str | None:
        return validation_failure(
            acc, target, parent="2.3.0", parent_accuracy=parent_accuracy, max_regression=0.01
        )

    # Execute
    before, after = verdict(accuracy), verdict(accuracy + more)

    # Assert
    if before is None:
        assert after is None


def test_first_candidate_is_the_parents_next_minor_or_the_first_version() -> None:
    # Prepare / Execute
    orphan, child = first_candidate(None), first_candidate("1.4.2")

    # Assert
    assert orphan == FIRST_VERSION == Version(1, 0, 0)
    assert child == Version(1, 5, 0)


@pytest.mark.parametrize(
    ("status", "scored", "expected"),
    [
        ("running", False, True),
        ("running", True, False),  # a replay: the first score stands
        ("compensating", False, True),  # a failing round keeps its curve
        ("failed", False, True),
        ("succeeded", False, True),  # announced before the round ended, handled after
        ("unknown", False, False),  # no keys for a round nobody knows
    ],
)
def test_an_iteration_is_scored_once_for_a_round_that_exists(
    status: str, scored: bool, expected: bool
) -> None:
    # Execute / Assert
    assert score_iteration(status, scored) is expected


def test_a_curve_point_keeps_the_holdout_metrics_and_not_the_parents() -> None:
    # Prepare
    metrics = {"accuracy": 0.91, "f1": 0.9, "parent_accuracy": 0.88}

    # Execute
    point = curve_point(metrics)

    # Assert
    assert point == {"accuracy": 0.91, "f1": 0.9}
    assert metrics["parent_accuracy"] == 0.88  # the candidate's record is left as it was
