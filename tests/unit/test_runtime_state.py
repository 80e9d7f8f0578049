"""A round's hash read into `RoundState`: every field the services write comes back typed."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from schemas.ops import RoundRequested
from schemas.steps import Step
from services.runtime.state import (
    Field,
    RoundState,
    base_field,
    closing_field,
    deadline_field,
    outcome_field,
    stage_deadline_field,
    stage_started_field,
    training_field,
)


def test_an_empty_hash_is_an_unknown_round() -> None:
    state = RoundState.from_hash("r1", {})
    assert not state.exists
    assert not state.running
    assert state.at(0).base is None


def test_what_the_services_write_is_read_back_typed() -> None:
    # Prepare: a hash as a round in its second iteration, mid-rollout, would have it
    request = RoundRequested(round_id="r1", training_rounds=3)
    h = {
        Field.STATUS: "running",
        Field.STEP: str(int(Step.DEPLOY)),
        Field.ITERATION: "1",
        Field.REQUEST: request.model_dump_json(),
        Field.PARENT_VERSION: "",
        Field.START_DIGEST: "a" * 64,
        Field.EXAMPLE_CAP: "220",
        Field.METRICS: json.dumps({"accuracy": 0.93}),
        Field.DEPLOY_FLEET: json.dumps(["d2", "d1"]),
        Field.BYTES_UP: "4096",
        base_field(0): "a" * 64,
        deadline_field(0): "1000",
        training_field(0): "1",
        closing_field(0): "1",
        base_field(1): "b" * 64,
        stage_deadline_field(1): "5000",
        stage_started_field(1): "1",
        outcome_field("selected"): "{}",
    }

    # Execute
    state = RoundState.from_hash("r1", {str(k): v for k, v in h.items()})

    # Assert
    assert state.running
    assert state.step is Step.DEPLOY
    assert state.request == request
    assert state.parent_version is None  # written as "" when the round has no parent
    assert state.example_cap == 220
    assert state.metrics == {"accuracy": 0.93}
    assert state.deploy_fleet == ["d2", "d1"]
    assert state.counter(Field.BYTES_UP) == 4096
    assert state.counter(Field.BYTES_DOWN) == 0
    assert state.at(0).closing
    assert state.at(0).deadline_ms == 1000
    assert state.at(1).base == "b" * 64
    assert not state.at(1).training
    assert state.stage(1).started
    assert state.stage(1).deadline_ms == 5000
    assert not state.stage(2).started
    assert state.outcomes == {"selected"}


@given(st.integers(0, 10_000), st.text("0123456789abcdef", min_size=64, max_size=64))
def test_an_iterations_pinned_base_is_read_as_that_iteration(it: int, digest: str) -> None:
    state = RoundState.from_hash("r1", {Field.STATUS: "running", base_field(it): digest})
    assert state.at(it).base == digest
    assert all(state.at(other).base is None for other in (it + 1, it + 10))


def test_a_status_nobody_writes_reads_as_unknown() -> None:
    assert RoundState.from_hash("r1", {Field.STATUS: "paused"}).status == "unknown"
