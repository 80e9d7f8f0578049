"""Metric labels come from fixed vocabularies: refusal codes, steps, failure reasons."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from schemas.device import DeviceUpdate, FailureReason
from schemas.steps import Step
from services.aggregator.decisions import REFUSAL_CODES, check_payload, check_update
from services.runtime import metrics

BASE, OTHER = "a" * 64, "b" * 64
SPEC = (("w", (64, 10)), ("b", (10,)))


def _update(**fields: Any) -> DeviceUpdate:
    return DeviceUpdate.model_validate(
        {
            "round_id": "r1",
            "iteration": 2,
            "device_id": "d1",
            "base_digest": BASE,
            "num_examples": 100,
            "train_loss": 0.1,
            "train_accuracy": 0.9,
            "blob": b"",
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("update", "read", "code"),
    [
        ({}, {"round_status": "failed"}, "round_not_running"),
        ({}, {"selected": False}, "not_selected"),
        ({"iteration": 1}, {}, "iteration_not_open"),
        ({}, {"closing": True}, "iteration_not_open"),
        ({}, {"held_digest": OTHER}, "wrong_base"),
        ({"num_examples": 101}, {}, "too_many_examples"),
    ],
)
def test_each_refused_update_carries_a_code_of_the_fixed_list(
    update: dict[str, Any], read: dict[str, Any], code: str
) -> None:
    # Prepare
    values: dict[str, Any] = {
        "round_status": "running",
        "selected": True,
        "current_iteration": 2,
        "closing": False,
        "held_digest": BASE,
        "registered_examples": 100,
        **read,
    }

    # Execute
    refusal = check_update(_update(**update), **values)

    # Assert: the label is the code; the reason, with its ids, stays out of it
    assert refusal is not None
    assert refusal.code == code
    assert code in REFUSAL_CODES
    assert code not in refusal.reason


@pytest.mark.parametrize(
    ("payload_base", "payload_spec", "code"),
    [(OTHER, SPEC, "payload_base_mismatch"), (BASE, (("w", (1,)),), "shape_mismatch")],
)
def test_a_refused_payload_carries_its_code(
    payload_base: str, payload_spec: Any, code: str
) -> None:
    # Execute
    refusal = check_payload(
        base_digest=BASE,
        payload_base_digest=payload_base,
        payload_spec=payload_spec,
        model_spec=SPEC,
    )

    # Assert
    assert refusal is not None
    assert refusal.code == code in REFUSAL_CODES


def test_a_label_outside_its_vocabulary_is_other() -> None:
    # Execute / Assert: a device's free-text reason must not become a series of its own
    assert metrics.bounded("battery_died", set(FailureReason)) == "battery_died"
    assert metrics.bounded("my cat unplugged me", set(FailureReason)) == metrics.OTHER


def test_device_outcomes_are_done_a_known_reason_or_other() -> None:
    # Prepare
    def count(outcome: str) -> float:
        sample = "fedsaga_iteration_devices_total"
        return REGISTRY.get_sample_value(sample, {"outcome": outcome}) or 0.0

    before = {o: count(o) for o in ("done", "went_offline", metrics.OTHER)}

    # Execute
    metrics.device_outcome("done")
    metrics.device_outcome("went_offline")
    metrics.device_outcome("device d7 exploded")

    # Assert
    assert {o: count(o) - before[o] for o in before} == {
        "done": 1,
        "went_offline": 1,
        metrics.OTHER: 1,
    }


def test_steps_are_labelled_by_name() -> None:
    # Execute / Assert
    assert [metrics.step_label(s) for s in Step] == [
        "select",
        "distribute",
        "train",
        "aggregate",
        "validate",
        "deploy",
    ]
    assert metrics.step_label(9) == metrics.OTHER
