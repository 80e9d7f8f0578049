"""The trainer coordinator's decisions: when an iteration closes and whether it met quorum."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.device import FailureReason
from services.trainer_coordinator.decisions import (
    DONE,
    TRAINING,
    failed_state,
    failure_note,
    fence,
    quorum,
    quorum_size,
    settled,
    should_close,
    still_offline,
    worth_checking,
)

PROPERTY = settings(database=None, deadline=None)

reasons = st.sampled_from(list(FailureReason))
device_states = st.one_of(st.just(TRAINING), st.just(DONE), reasons.map(failed_state))
iterations = st.dictionaries(st.integers(0, 200).map(lambda i: f"d{i}"), device_states)


# --- settled / should_close ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "contributors", "expected"),
    [
        ({}, set(), True),
        ({"a": DONE, "b": "failed:battery_died"}, set(), True),
        ({"a": DONE, "b": TRAINING}, set(), False),
        ({"a": DONE, "b": TRAINING}, {"b"}, True),  # its update is in the aggregate
        ({"a": TRAINING}, {"b"}, False),
    ],
)
def test_settled_examples(states: dict[str, str], contributors: set[str], expected: bool) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    result = settled(states, contributors)

    # Assert
    assert result is expected


@PROPERTY
@given(states=iterations, contributors=st.sets(st.integers(0, 200).map(lambda i: f"d{i}")))
def test_an_iteration_closes_when_settled_and_always_at_its_deadline(
    states: dict[str, str], contributors: set[str]
) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    on_time = should_close(states, contributors, deadline_passed=False)
    late = should_close(states, contributors, deadline_passed=True)

    # Assert
    assert late is True
    assert on_time == all(s != TRAINING or d in contributors for d, s in states.items())


# --- fence -------------------------------------------------------------------------------------


def test_fence_counts_contributors_done_and_the_rest_past_the_deadline() -> None:
    # Prepare
    states = {"a": TRAINING, "b": TRAINING, "c": DONE, "d": "failed:low_battery"}

    # Execute
    moves = fence(states, contributors={"a", "d"})

    # Assert: only devices still training move; a failure stays a failure
    assert moves == {"a": DONE, "b": "failed:deadline_passed"}


@PROPERTY
@given(states=iterations, contributors=st.sets(st.integers(0, 200).map(lambda i: f"d{i}")))
def test_after_the_fence_the_iteration_is_settled(
    states: dict[str, str], contributors: set[str]
) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    fenced = {**states, **fence(states, contributors)}

    # Assert
    assert settled(fenced, set())
    assert set(fenced) == set(states)


# --- quorum ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_nodes", "cohort", "need"),
    [(2, 10, 5), (2, 11, 6), (8, 10, 8), (1, 1, 1), (3, 0, 3), (1, 2, 1)],
)
def test_quorum_size_is_the_minimum_and_half_the_cohort(
    min_nodes: int, cohort: int, need: int
) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    size = quorum_size(min_nodes, cohort)

    # Assert
    assert size == need


def test_quorum_met_lists_the_participants_and_the_failures() -> None:
    # Prepare
    states = {"b": DONE, "a": DONE, "c": "failed:battery_died"}

    # Execute
    judged = quorum(states, iteration=0, cohort=3, min_nodes=2)

    # Assert
    assert judged.met
    assert judged.reason is None
    assert judged.done == ["a", "b"]
    assert judged.failures == {"c": "battery_died"}
    assert judged.need == 2


def test_quorum_missed_says_how_many_reported_and_why_the_rest_did_not() -> None:
    # Prepare
    states = {
        "a": DONE,
        "b": "failed:battery_died",
        "c": "failed:battery_died",
        "d": "failed:deadline_passed",
    }

    # Execute
    judged = quorum(states, iteration=3, cohort=4, min_nodes=2)

    # Assert
    assert not judged.met
    assert judged.reason == (
        "insufficient participation in iteration 3: 1/4 devices reported, need 2 "
        "(battery_died: 2, deadline_passed: 1)"
    )


@PROPERTY
@given(
    done=st.integers(0, 100),
    failed=st.integers(0, 100),
    min_nodes=st.integers(1, 100),
)
def test_quorum_is_monotone_in_the_number_done(done: int, failed: int, min_nodes: int) -> None:
    # Prepare: one more device done, one fewer failed, same cohort
    cohort = done + failed + 1

    def states(n_done: int) -> dict[str, str]:
        return {f"d{i}": DONE if i < n_done else "failed:went_offline" for i in range(cohort)}

    # Execute
    fewer = quorum(states(done), iteration=0, cohort=cohort, min_nodes=min_nodes)
    more = quorum(states(done + 1), iteration=0, cohort=cohort, min_nodes=min_nodes)

    # Assert
    if fewer.met:
        assert more.met
    assert fewer.met == (done >= max(min_nodes, math.ceil(cohort / 2)))


@PROPERTY
@given(states=iterations, min_nodes=st.integers(1, 50), extra=st.integers(0, 50))
def test_quorum_never_passes_with_fewer_than_half_the_cohort(
    states: dict[str, str], min_nodes: int, extra: int
) -> None:
    # Prepare: the cohort may hold devices that never got to train
    cohort = len(states) + extra

    # Execute
    judged = quorum(states, iteration=0, cohort=cohort, min_nodes=min_nodes)

    # Assert
    assert set(judged.done) | set(judged.failures) == set(states)
    assert not set(judged.done) & set(judged.failures)
    if judged.met:
        assert len(judged.done) >= min_nodes
        assert 2 * len(judged.done) >= cohort
    else:
        assert judged.reason is not None
        assert judged.reason.startswith("insufficient")


# --- records -----------------------------------------------------------------------------------


@PROPERTY
@given(reason=reasons, iteration=st.integers(0, 1000))
def test_a_failure_note_reads_back_as_its_reason(reason: FailureReason, iteration: int) -> None:
    # Prepare: the status view counts reasons by the text before " ("

    # Execute
    note = failure_note(reason, iteration)

    # Assert
    assert FailureReason(note.split(" (")[0]) is reason
    assert failed_state(reason).removeprefix("failed:") == reason


@pytest.mark.parametrize(
    ("round_status", "device_state", "expected"),
    [
        ("running", None, True),
        ("running", "offline", True),
        ("running", "idle", False),
        ("running", "training", False),
        ("compensating", "offline", False),
        (None, None, False),
    ],
)
def test_still_offline(round_status: str | None, device_state: str | None, expected: bool) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    result = still_offline(round_status, device_state)

    # Assert
    assert result is expected


# --- worth_checking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("training", "undelivered", "expected"),
    [
        (0, 0, True),  # the last device settled
        (900, 3, False),  # mid-burst: the aggregator a few updates ahead
        (3, 3, True),  # the last three training may be the three contributors not yet heard
        (2, 3, True),
        (4, 3, False),  # at least one is truly still training
        (5, -1, False),  # counts momentarily off (a fence): no scan unless none is training
        (0, -1, True),
    ],
)
def test_a_full_check_is_worth_it_only_when_settling_is_possible(
    training: int, undelivered: int, expected: bool
) -> None:
    assert worth_checking(training, undelivered) is expected


@given(
    states=st.lists(st.sampled_from(["training", "done", "failed:x"]), min_size=1, max_size=30),
    contributed=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_never_skipping_a_check_that_would_settle_the_iteration(
    states: list[str], contributed: list[bool]
) -> None:
    # Prepare: devices, their states, and which contributed (every done device did)
    devices = {f"d{i}": s for i, s in enumerate(states)}
    contributors = {d for i, (d, s) in enumerate(devices.items()) if s == "done" or contributed[i]}
    training = sum(s == "training" for s in devices.values())
    undelivered = len(contributors) - sum(s == "done" for s in devices.values())

    # Assert: whenever the full check would find it settled, the counters say check
    if settled(devices, contributors):
        assert worth_checking(training, undelivered)
