"""Message validation: ids, digests, bounds, the legacy `simulate_failure` bool, frozen models."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas.codec import decode, pack
from schemas.device import (
    DeployCommand,
    DeviceReport,
    DeviceStatus,
    DeviceUpdate,
    ModelPayload,
    TrainCommand,
)
from schemas.errors import DecodeError, SchemaError
from schemas.events import (
    ModelAggregated,
    NodesSelected,
    RoundFailed,
    StepCompensated,
    UpdateReceived,
    WeightsDistributed,
)
from schemas.ops import Chaos, RoundRequested

PROPERTY = settings(database=None, deadline=None)
D1 = hashlib.sha256(b"one").hexdigest()

BAD_IDS = ["", "has space", "a/b", "+", "#", "r1\n", "x" * 65, "é", "a:b", "$share"]
GOOD_IDS = ["r1", "x" * 64, "a.b-c_D9", "0", "-", "."]


# --- simulate_failure: the seed's bool and the Chaos names --------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, Chaos.PARTICIPATION),
        (False, Chaos.NONE),
        (None, Chaos.NONE),
        ("none", Chaos.NONE),
        ("participation", Chaos.PARTICIPATION),
        ("validation", Chaos.VALIDATION),
        ("deployment", Chaos.DEPLOYMENT),
        (Chaos.DEPLOYMENT, Chaos.DEPLOYMENT),
    ],
    ids=repr,
)
def test_simulate_failure_accepts_the_seed_bool_and_chaos_names(
    value: object,
    expected: Chaos,
) -> None:
    # Prepare: nothing beyond the value

    # Execute
    request = RoundRequested(round_id="r1", simulate_failure=value)

    # Assert
    assert request.simulate_failure is expected


def test_simulate_failure_true_survives_the_wire() -> None:
    # Prepare: an old client that still sends the seed's bool over msgpack
    wire = pack({"round_id": "r1", "simulate_failure": True})

    # Execute
    request = decode(wire, RoundRequested)

    # Assert
    assert request.simulate_failure is Chaos.PARTICIPATION


@pytest.mark.parametrize("value", ["explode", "PARTICIPATION", 1, 0, 2.0, [True]], ids=repr)
def test_simulate_failure_rejects_anything_else(value: object) -> None:
    # Prepare: nothing beyond the value

    # Execute / Assert
    with pytest.raises(ValidationError, match="simulate_failure"):
        RoundRequested(round_id="r1", simulate_failure=value)


def test_request_defaults_are_the_tuned_digits_settings() -> None:
    # Prepare: nothing

    # Execute
    request = RoundRequested(round_id="r1")

    # Assert
    assert request.kind == "round.requested"
    assert request.target_accuracy == 0.9
    assert request.min_participating_nodes == 3
    assert request.training_rounds == 25
    assert (request.local_epochs, request.batch_size, request.learning_rate) == (5, 16, 0.3)
    assert request.simulate_failure is Chaos.NONE
    assert request.model_version is None


# --- ids and digests -----------------------------------------------------------------------------


def _with_id(field: str, value: str) -> BaseModel:
    builders: dict[str, Any] = {
        "RoundRequested.round_id": lambda v: RoundRequested(round_id=v),
        "RoundRequested.model_name": lambda v: RoundRequested(round_id="r1", model_name=v),
        "DeviceStatus.device_id": lambda v: DeviceStatus(device_id=v),
        "UpdateReceived.device_id": lambda v: UpdateReceived(
            round_id="r1", iteration=0, device_id=v, num_examples=1
        ),
        "NodesSelected.cohort": lambda v: NodesSelected(
            round_id="r1", request=RoundRequested(round_id="r1"), cohort=["ok", v], eligible=2
        ),
        "DeviceReport.device_id": lambda v: DeviceReport(
            round_id="r1", device_id=v, status="training"
        ),
        "RoundFailed.round_id": lambda v: RoundFailed(round_id=v, step=1, reason="x"),
        "DeployCommand.round_id": lambda v: DeployCommand(
            round_id=v, version="1.0.0", digest=D1, stage=10
        ),
    }
    return builders[field](value)  # type: ignore[no-any-return]


def _leaves(obj: object) -> list[object]:
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in _leaves(v)]
    if isinstance(obj, list | tuple):
        return [leaf for v in obj for leaf in _leaves(v)]
    return [obj]


ID_FIELDS = [
    "RoundRequested.round_id",
    "RoundRequested.model_name",
    "DeviceStatus.device_id",
    "UpdateReceived.device_id",
    "NodesSelected.cohort",
    "DeviceReport.device_id",
    "RoundFailed.round_id",
    "DeployCommand.round_id",
]


@pytest.mark.parametrize("field", ID_FIELDS)
@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
def test_invalid_ids_are_rejected(field: str, value: str) -> None:
    # Prepare: nothing beyond the id

    # Execute / Assert
    with pytest.raises(ValidationError):
        _with_id(field, value)


@pytest.mark.parametrize("field", ID_FIELDS)
@pytest.mark.parametrize("value", GOOD_IDS, ids=repr)
def test_valid_ids_are_accepted(field: str, value: str) -> None:
    # Prepare: nothing beyond the id

    # Execute
    message = _with_id(field, value)

    # Assert
    assert value in _leaves(message.model_dump())


@PROPERTY
@given(value=st.text(max_size=80))
def test_ids_are_exactly_the_topic_safe_ones(value: str) -> None:
    # Prepare
    ok = 1 <= len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "_.-") for c in value)

    # Execute
    try:
        RoundRequested(round_id=value)
        accepted = True
    except ValidationError:
        accepted = False

    # Assert
    assert accepted == ok


def test_invalid_id_on_the_wire_is_a_decode_error() -> None:
    # Prepare
    wire = pack({"round_id": "a/b/#"})

    # Execute / Assert
    with pytest.raises(DecodeError, match="round_id"):
        decode(wire, RoundRequested)


@pytest.mark.parametrize("digest", [D1.upper(), D1[:-1], D1 + "0", "g" * 64, ""], ids=repr)
def test_invalid_digests_are_rejected(digest: str) -> None:
    # Prepare: nothing beyond the digest

    # Execute / Assert
    with pytest.raises(ValidationError, match="digest"):
        ModelAggregated(round_id="r1", iterations=1, digest=digest)


def test_msg_id_longer_than_64_is_rejected() -> None:
    # Prepare: nothing

    # Execute / Assert
    with pytest.raises(ValidationError, match="msg_id"):
        RoundRequested(round_id="r1", msg_id="m" * 65)


def test_each_message_gets_its_own_msg_id() -> None:
    # Prepare / Execute
    ids = {RoundRequested(round_id="r1").msg_id for _ in range(50)}

    # Assert
    assert len(ids) == 50


# --- bounds --------------------------------------------------------------------------------------


def _make(model: type[BaseModel], **fields: object) -> BaseModel:
    base: dict[type[BaseModel], dict[str, object]] = {
        RoundRequested: {"round_id": "r1"},
        TrainCommand: {
            "round_id": "r1",
            "iteration": 0,
            "model_digest": D1,
            "epochs": 1,
            "batch_size": 1,
            "learning_rate": 0.1,
            "deadline_ms": 0,
        },
        DeployCommand: {"round_id": "r1", "version": "1.0.0", "digest": D1, "stage": 10},
        RoundFailed: {"round_id": "r1", "step": 1, "reason": "x"},
        StepCompensated: {"round_id": "r1", "step": 1, "service": "selector"},
        UpdateReceived: {"round_id": "r1", "iteration": 0, "device_id": "d1", "num_examples": 1},
        DeviceStatus: {"device_id": "d1"},
        DeviceUpdate: {
            "round_id": "r1",
            "iteration": 0,
            "device_id": "d1",
            "base_digest": D1,
            "num_examples": 1,
            "train_loss": 0.1,
            "train_accuracy": 0.5,
            "blob": b"",
        },
        ModelAggregated: {"round_id": "r1", "iterations": 1, "digest": D1},
        WeightsDistributed: {
            "round_id": "r1",
            "iteration": 0,
            "global_digest": D1,
            "recipients": [],
            "bytes_sent": 0,
        },
        ModelPayload: {
            "purpose": "train",
            "round_id": "r1",
            "base_digest": None,
            "digest": D1,
            "blob": b"",
        },
    }
    return model(**{**base[model], **fields})


OUT_OF_BOUNDS = [
    (RoundRequested, "target_accuracy", -0.01),
    (RoundRequested, "target_accuracy", 1.01),
    (RoundRequested, "min_participating_nodes", 0),
    (RoundRequested, "min_participating_nodes", -1),
    (RoundRequested, "training_rounds", 0),
    (RoundRequested, "training_rounds", 1001),
    (RoundRequested, "cohort_size", 0),
    (RoundRequested, "cohort_size", 100_001),
    (RoundRequested, "local_epochs", 0),
    (RoundRequested, "batch_size", 0),
    (RoundRequested, "learning_rate", 0.0),
    (RoundRequested, "learning_rate", -0.1),
    (RoundRequested, "learning_rate", float("nan")),
    (RoundRequested, "iteration_timeout_ms", 99),
    (RoundRequested, "iteration_timeout_ms", 0),
    (RoundRequested, "layer_sizes", (64,)),
    (RoundRequested, "layer_sizes", ()),
    (RoundRequested, "layer_sizes", (64, 0, 10)),
    (RoundRequested, "layer_sizes", (64, -3, 10)),
    (RoundRequested, "layer_sizes", (64, 65_537)),
    (RoundRequested, "ts_ms", -1),
    (TrainCommand, "epochs", 0),
    (TrainCommand, "batch_size", 0),
    (TrainCommand, "learning_rate", 0.0),
    (TrainCommand, "iteration", -1),
    (DeployCommand, "stage", 0),
    (DeployCommand, "stage", 101),
    (RoundFailed, "step", 0),
    (RoundFailed, "step", 7),
    (StepCompensated, "step", 0),
    (UpdateReceived, "num_examples", 0),
    (UpdateReceived, "iteration", -1),
    (DeviceStatus, "battery", -0.1),
    (DeviceStatus, "battery", 1.1),
    (DeviceStatus, "memory_mb", -1),
    (DeviceStatus, "num_examples", -1),
    (DeviceUpdate, "num_examples", 0),
    (DeviceUpdate, "train_accuracy", 1.5),
    (ModelAggregated, "iterations", 0),
    (WeightsDistributed, "bytes_sent", -1),
    (ModelPayload, "iteration", -1),
]


@pytest.mark.parametrize(
    ("model", "field", "value"),
    OUT_OF_BOUNDS,
    ids=[f"{m.__name__}.{f}={v!r}" for m, f, v in OUT_OF_BOUNDS],
)
def test_out_of_bounds_values_are_rejected(
    model: type[BaseModel], field: str, value: object
) -> None:
    # Prepare: nothing beyond the value

    # Execute / Assert
    with pytest.raises(ValidationError, match=field):
        _make(model, **{field: value})


AT_BOUNDS = [
    (RoundRequested, "target_accuracy", 0.0),
    (RoundRequested, "target_accuracy", 1.0),
    (RoundRequested, "min_participating_nodes", 1),
    (RoundRequested, "training_rounds", 1000),
    (RoundRequested, "iteration_timeout_ms", 100),
    (RoundRequested, "layer_sizes", (1, 65_536)),
    (DeployCommand, "stage", 1),
    (DeployCommand, "stage", 100),
    (RoundFailed, "step", 6),
    (DeviceStatus, "battery", 0.0),
    (DeviceUpdate, "train_accuracy", 1.0),
    (ModelPayload, "iteration", 0),
]


@pytest.mark.parametrize(
    ("model", "field", "value"), AT_BOUNDS, ids=[f"{m.__name__}.{f}={v!r}" for m, f, v in AT_BOUNDS]
)
def test_values_at_the_bounds_are_accepted(
    model: type[BaseModel], field: str, value: object
) -> None:
    # Prepare: nothing beyond the value

    # Execute
    message = _make(model, **{field: value})

    # Assert
    assert getattr(message, field) == value


def test_layer_sizes_from_a_list_become_a_tuple() -> None:
    # Prepare: JSON and msgpack both carry arrays
    sizes = [64, 16, 10]

    # Execute
    request = RoundRequested(round_id="r1", layer_sizes=sizes)

    # Assert
    assert request.layer_sizes == (64, 16, 10)


@pytest.mark.parametrize(
    ("field", "value"),
    [("state", "sleeping"), ("network", "5g")],
)
def test_literal_fields_reject_unknown_values(field: str, value: str) -> None:
    # Prepare: nothing beyond the value

    # Execute / Assert
    with pytest.raises(ValidationError, match=field):
        DeviceStatus(device_id="d1", **{field: value})


# --- model behaviour ---------------------------------------------------------------------------


def test_messages_are_frozen() -> None:
    # Prepare
    request = RoundRequested(round_id="r1")

    # Execute / Assert
    with pytest.raises(ValidationError, match="frozen"):
        request.round_id = "r2"  # type: ignore[misc]


def test_extra_constructor_fields_are_rejected() -> None:
    # Prepare: nothing

    # Execute / Assert
    with pytest.raises(ValidationError, match="surprise"):
        RoundRequested(round_id="r1", surprise=1)  # type: ignore[call-arg]


def test_decode_error_is_a_schema_error_and_value_error() -> None:
    # Prepare
    error = DecodeError("bad", topic="fl/ops/round/start")

    # Execute
    text = str(error)

    # Assert
    assert isinstance(error, SchemaError)
    assert isinstance(error, ValueError)
    assert text == "fl/ops/round/start: bad"
    assert error.reason == "bad"
    assert str(DecodeError("bad")) == "bad"
