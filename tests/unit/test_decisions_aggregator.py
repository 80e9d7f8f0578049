"""The aggregator's decisions: the checks an update and its decoded payload must pass."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.device import DeviceUpdate
from services.aggregator.decisions import (
    Refusal,
    check_payload,
    check_update,
    close_plan,
    fedavg_weight,
)

PROPERTY = settings(database=None, deadline=None)

BASE, OTHER = "a" * 64, "b" * 64
SPEC = (("w", (64, 10)), ("b", (10,)))


def _check(iteration: int = 2, num_examples: int = 100, **read: Any) -> Refusal | None:
    """Check an update from d1 for round r1 against BASE, with the values the handler
    read (by default, those of an update that passes every check)."""
    update = DeviceUpdate(
        round_id="r1",
        iteration=iteration,
        device_id="d1",
        base_digest=BASE,
        num_examples=num_examples,
        train_loss=0.1,
        train_accuracy=0.9,
        blob=b"",
    )
    defaults: dict[str, Any] = {
        "round_status": "running",
        "selected": True,
        "current_iteration": 2,
        "closing": False,
        "held_digest": BASE,
        "registered_examples": 100,
    }
    return check_update(update, **{**defaults, **read})


def test_an_update_that_fits_passes() -> None:
    # Prepare / Execute
    refusal = _check()

    # Assert
    assert refusal is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"round_status": "failed"}, Refusal("round r1 is failed", stale=True)),
        ({"round_status": "unknown"}, Refusal("round r1 is unknown", stale=True)),
        ({"selected": False}, Refusal("device d1 was not selected for round r1")),
        ({"iteration": 1}, Refusal("iteration 1 is not open (current 2)", stale=True)),
        ({"closing": True}, Refusal("iteration 2 is not open (current 2)", stale=True)),
        (
            {"current_iteration": None},
            Refusal("iteration 2 is not open (current None)", stale=True),
        ),
        (
            {"held_digest": OTHER},
            Refusal("update is not against the model this device was sent"),
        ),
        (
            {"held_digest": None},
            Refusal("update is not against the model this device was sent"),
        ),
        (
            {"num_examples": 101},
            Refusal("num_examples 101 exceeds the 100 the device registered"),
        ),
    ],
    ids=repr,
)
def test_each_check_refuses_with_its_reason(changes: dict[str, Any], expected: Refusal) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    refusal = _check(**changes)

    # Assert
    assert refusal == expected


def test_an_unregistered_device_has_no_example_bound() -> None:
    # Prepare / Execute
    refusal = _check(registered_examples=None, num_examples=10**9)

    # Assert
    assert refusal is None


def test_the_first_failing_check_gives_the_reason() -> None:
    # Prepare: a stale round from a device nobody selected, against the wrong base

    # Execute
    refusal = _check(round_status="compensating", selected=False, held_digest=OTHER)

    # Assert: the round moved on; the rest is not worth reporting
    assert refusal == Refusal("round r1 is compensating", stale=True)


@PROPERTY
@given(
    status=st.sampled_from(["running", "failed", "succeeded", "compensating", "unknown"]),
    selected=st.booleans(),
    iteration=st.integers(0, 5),
    current=st.none() | st.integers(0, 5),
    closing=st.booleans(),
    held=st.none() | st.sampled_from([BASE, OTHER]),
    examples=st.integers(1, 1000),
    registered=st.none() | st.integers(0, 1000),
)
def test_an_update_passes_exactly_when_every_check_does(
    status: str,
    selected: bool,
    iteration: int,
    current: int | None,
    closing: bool,
    held: str | None,
    examples: int,
    registered: int | None,
) -> None:
    # Prepare
    every_check = (
        status == "running"
        and selected
        and iteration == current
        and not closing
        and held == BASE
        and (registered is None or examples <= registered)
    )

    # Execute
    refusal = _check(
        iteration,
        examples,
        round_status=status,
        selected=selected,
        current_iteration=current,
        closing=closing,
        held_digest=held,
        registered_examples=registered,
    )

    # Assert: stale only when the round or the iteration moved on (the checks run in order)
    assert (refusal is None) == every_check
    if refusal is not None:
        moved_on = status != "running" or (selected and (iteration != current or closing))
        assert refusal.stale == moved_on


# --- check_payload -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload_base", "payload_spec", "expected"),
    [
        (BASE, SPEC, None),
        (OTHER, SPEC, Refusal("payload base digest differs from the update's")),
        (None, SPEC, Refusal("payload base digest differs from the update's")),
        (BASE, (("w", (64, 10)),), Refusal("update shapes do not match the model")),
        (BASE, (("b", (10,)), ("w", (64, 10))), Refusal("update shapes do not match the model")),
        (OTHER, (), Refusal("payload base digest differs from the update's")),
    ],
)
def test_payload_checks(
    payload_base: str | None,
    payload_spec: tuple[tuple[str, tuple[int, ...]], ...],
    expected: Refusal | None,
) -> None:
    # Prepare: the update says BASE; the model has SPEC

    # Execute
    refusal = check_payload(
        base_digest=BASE,
        payload_base_digest=payload_base,
        payload_spec=payload_spec,
        model_spec=SPEC,
    )

    # Assert
    assert refusal == expected
    assert refusal is None or not refusal.stale


def test_an_updates_weight_is_its_examples_up_to_the_rounds_cap() -> None:
    assert fedavg_weight(50, None) == 50
    assert fedavg_weight(50, "220") == 50
    assert fedavg_weight(10**9, "220") == 220


# -- the close: in-memory sum plus the buffer -------------------------------------------------


def test_the_close_reads_only_what_this_instance_did_not_fold() -> None:
    assert close_plan({"a", "b", "c"}, {"a", "c"}) == (True, ["b"])
    assert close_plan({"a"}, {"a"}) == (True, [])
    assert close_plan({"a", "b"}, set()) == (True, ["a", "b"])


def test_a_sum_holding_a_non_contributor_is_not_trusted() -> None:
    assert close_plan({"a", "b"}, {"a", "x"}) == (False, ["a", "b"])


@given(
    st.sets(st.sampled_from("abcdefgh")),
    st.sets(st.sampled_from("abcdefgh")),
)
def test_the_close_counts_every_contributor_exactly_once(
    contributors: set[str], in_memory: set[str]
) -> None:
    usable, to_read = close_plan(contributors, in_memory)
    counted = (in_memory if usable else set()) | set(to_read)
    assert counted == contributors
    assert len(to_read) == len(set(to_read))
    assert not (usable and in_memory & set(to_read))
