"""The codec: every message round-trips, arrays keep dtype/shape/values, bad input: DecodeError."""

from __future__ import annotations

import hashlib
import inspect
import json
import struct
import typing

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from schemas import device, events, ops
from schemas.base import Message
from schemas.codec import (
    MAX_MESSAGE_BYTES,
    decode,
    decode_any,
    decode_json,
    encode,
    pack,
    unpack,
)
from schemas.device import (
    MAX_BLOB,
    DeployCommand,
    DeviceCommand,
    DeviceRejected,
    DeviceReport,
    DeviceStatus,
    DeviceUpdate,
    ModelPayload,
    RevokeCommand,
    RollbackCommand,
    StopCommand,
    TrainCommand,
)
from schemas.errors import DecodeError, first_error
from schemas.events import (
    ErrorReport,
    Event,
    IterationCompleted,
    ModelAggregated,
    ModelDeployed,
    ModelValidated,
    NodesSelected,
    RoundCompleted,
    RoundFailed,
    SagaEvent,
    StepCompensated,
    TrainingCompleted,
    UpdateReceived,
    WeightsDistributed,
)
from schemas.ops import Chaos, RoundRequested, RoundStopRequested

# No example database (it would write .hypothesis/ into the work tree); no timing flakes.
FUZZ = settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
PROPERTY = settings(database=None, deadline=None)

D1 = hashlib.sha256(b"one").hexdigest()
D2 = hashlib.sha256(b"two").hexdigest()
ALLOWED_DTYPES = ["<f4", "<f8", "<i8", "<i4", "|i1", "|u1", "<u4", "|b1"]


def _request() -> RoundRequested:
    return RoundRequested(
        round_id="r-1",
        model_name="digits.mlp",
        model_version="1.2.0",
        target_accuracy=0.85,
        min_participating_nodes=2,
        training_rounds=3,
        simulate_failure=Chaos.VALIDATION,
        cohort_size=4,
        local_epochs=2,
        batch_size=16,
        learning_rate=0.05,
        iteration_timeout_ms=2_000,
        layer_sizes=(64, 16, 10),
        seed=7,
    )


def _samples() -> list[Message]:
    """One non-default instance of every wire message."""
    blob = bytes(range(256)) * 3
    return [
        _request(),
        NodesSelected(round_id="r-1", request=_request(), cohort=["d1", "d2"], eligible=5),
        WeightsDistributed(
            round_id="r-1",
            iteration=2,
            global_digest=D1,
            recipients=["d1", "d2"],
            bytes_sent=12_345,
        ),
        UpdateReceived(round_id="r-1", iteration=1, device_id="d1", num_examples=40),
        TrainingCompleted(
            round_id="r-1", iteration=0, participants=["d1"], failures={"d2": "battery_died"}
        ),
        IterationCompleted(round_id="r-1", iteration=0, global_digest=D2, num_examples=80),
        ModelAggregated(round_id="r-1", iterations=3, digest=D1),
        ModelValidated(
            round_id="r-1",
            digest=D1,
            version="1.3.0",
            parent_version="1.2.0",
            metrics={"accuracy": 0.91, "loss": 0.3},
        ),
        events.CanaryStagePassed(
            round_id="r-1", version="1.3.0", stage=2, percent=50, devices=4, healthy=4
        ),
        ModelDeployed(round_id="r-1", version="1.3.0", stages=[10, 50, 100], devices=9),
        RoundCompleted(round_id="r-1", outcome="failed", version="1.2.0", reason="quorum"),
        RoundFailed(round_id="r-1", step=3, reason="only 1 of 2 participants"),
        StepCompensated(round_id="r-1", step=2, service="distributor", detail="revoked 2"),
        ErrorReport(service="selector", topic="fl/ops/round/start", reason="bad", round_id="r"),
        DeviceStatus(
            device_id="d1",
            state="training",
            battery=0.5,
            charging=True,
            network="cellular",
            memory_mb=256,
            num_examples=120,
            model_version="1.2.0",
            model_digest=D2,
        ),
        ModelPayload(
            purpose="train",
            round_id="r-1",
            iteration=1,
            version=None,
            base_digest=D1,
            digest=D2,
            blob=blob,
        ),
        TrainCommand(
            round_id="r-1",
            iteration=1,
            model_digest=D1,
            epochs=2,
            batch_size=8,
            learning_rate=0.01,
            deadline_ms=1_700_000_000_000,
            chaos=Chaos.PARTICIPATION,
        ),
        StopCommand(round_id="r-1", reason="compensation"),
        RevokeCommand(round_id="r-1", reason="compensation"),
        DeployCommand(round_id="r-1", version="1.3.0", digest=D1, stage=50, chaos=Chaos.DEPLOYMENT),
        RollbackCommand(round_id="r-1", version="1.3.0"),
        RoundStopRequested(round_id="r-1", reason="wrong data"),
        DeviceUpdate(
            round_id="r-1",
            iteration=1,
            device_id="d1",
            base_digest=D1,
            num_examples=40,
            train_loss=0.25,
            train_accuracy=0.9,
            blob=blob,
        ),
        DeviceReport(
            round_id="r-1",
            device_id="d1",
            iteration=1,
            status="deployed",
            version="1.3.0",
            metrics={"accuracy": 0.9, "previous_accuracy": 0.8},
        ),
        DeviceRejected(
            device_id="d1",
            service="aggregator",
            topic="fl/device/d1/update",
            reason="iteration 1 is not open (current 2)",
            round_id="r-1",
        ),
    ]


SAMPLES = _samples()
EVENT_SAMPLES = [m for m in SAMPLES if isinstance(m, Event)]
COMMAND_SAMPLES = [
    m
    for m in SAMPLES
    if isinstance(m, TrainCommand | StopCommand | RevokeCommand | DeployCommand | RollbackCommand)
]
TRUNCATED = [
    m
    for m in SAMPLES
    if isinstance(m, RoundRequested | NodesSelected | DeviceStatus | ModelPayload | DeployCommand)
]


def _ids(messages: list[Message]) -> list[str]:
    return [type(m).__name__ for m in messages]


def _ext(payload: object, code: int = 1) -> bytes:
    """A top-level msgpack ext32 (any signed type code), as a malicious peer would craft it."""
    inner = payload if isinstance(payload, bytes) else msgpack.packb(payload)
    return b"\xc9" + struct.pack(">Ib", len(inner), code) + inner


# --- coverage of the contract -----------------------------------------------------------------


def test_samples_cover_every_message_class() -> None:
    # Prepare
    defined = {
        cls
        for module in (events, device, ops)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Message) and cls not in (Message, Event)
    }

    # Execute
    sampled = {type(m) for m in SAMPLES}

    # Assert
    assert defined == sampled


def test_saga_event_union_holds_every_event_class() -> None:
    # Prepare
    event_classes = {type(m) for m in EVENT_SAMPLES}

    # Execute
    members = set(typing.get_args(typing.get_args(SagaEvent)[0]))

    # Assert
    assert members == event_classes


def test_device_command_union_holds_every_command_class() -> None:
    # Prepare
    expected = {TrainCommand, StopCommand, RevokeCommand, DeployCommand, RollbackCommand}

    # Execute
    members = set(typing.get_args(typing.get_args(DeviceCommand)[0]))

    # Assert
    assert members == expected


def test_kinds_are_unique() -> None:
    # Prepare / Execute
    kinds = [m.kind for m in SAMPLES]

    # Assert
    assert len(set(kinds)) == len(kinds)


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("message", SAMPLES, ids=_ids(SAMPLES))
def test_every_message_round_trips(message: Message) -> None:
    # Prepare
    data = encode(message)

    # Execute
    out = decode(data, type(message))

    # Assert
    assert type(out) is type(message)
    assert out == message
    assert encode(out) == data


@pytest.mark.parametrize("event", EVENT_SAMPLES, ids=_ids(EVENT_SAMPLES))
def test_saga_event_union_decodes_to_the_right_class(event: Event) -> None:
    # Prepare
    data = encode(event)

    # Execute
    out = decode(data, SagaEvent)

    # Assert
    assert type(out) is type(event)
    assert out == event


@pytest.mark.parametrize("command", COMMAND_SAMPLES, ids=_ids(COMMAND_SAMPLES))
def test_device_command_union_decodes_to_the_right_class(command: Message) -> None:
    # Prepare
    data = encode(command)

    # Execute
    out = decode(data, DeviceCommand)

    # Assert
    assert type(out) is type(command)
    assert out == command


def test_bytes_fields_stay_bytes() -> None:
    # Prepare
    payload = next(m for m in SAMPLES if isinstance(m, ModelPayload))

    # Execute
    out = decode(encode(payload), ModelPayload)

    # Assert
    assert isinstance(out.blob, bytes)
    assert out.blob == payload.blob


def test_request_keeps_enum_and_tuple_types() -> None:
    # Prepare
    request = _request()

    # Execute
    out = decode(encode(request), RoundRequested)

    # Assert
    assert out.simulate_failure is Chaos.VALIDATION
    assert out.layer_sizes == (64, 16, 10)
    assert isinstance(out.layer_sizes, tuple)


def test_request_round_trips_through_json() -> None:
    # Prepare: the selector stores the request as JSON and reads it back later
    request = _request()

    # Execute
    out = decode_json(request.model_dump_json().encode(), RoundRequested)

    # Assert
    assert out == request


@PROPERTY
@given(
    round_id=st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z"),
    target=st.floats(0.0, 1.0),
    lr=st.floats(1e-9, 10.0),
    cohort=st.integers(3, 100_000),  # at least the default min_participating_nodes
    chaos=st.sampled_from(Chaos),
    sizes=st.lists(st.integers(1, 65_536), min_size=2, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_valid_request_round_trips(
    round_id: str,
    target: float,
    lr: float,
    cohort: int,
    chaos: Chaos,
    sizes: list[int],
    seed: int,
) -> None:
    # Prepare
    request = RoundRequested(
        round_id=round_id,
        target_accuracy=target,
        learning_rate=lr,
        cohort_size=cohort,
        simulate_failure=chaos,
        layer_sizes=tuple(sizes),
        seed=seed,
    )

    # Execute
    out = decode(encode(request), RoundRequested)

    # Assert
    assert out == request


def test_a_seed_msgpack_cannot_carry_is_refused() -> None:
    # Execute / Assert: refused at validation, not later at encoding
    with pytest.raises(ValidationError):
        RoundRequested(round_id="r1", seed=2**64)


# --- numpy arrays ----------------------------------------------------------------------------


@PROPERTY
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from(ALLOWED_DTYPES).map(np.dtype),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_arrays_keep_dtype_shape_and_values(arr: np.ndarray) -> None:
    # Prepare
    data = pack({"w": arr})

    # Execute
    out = unpack(data)["w"]

    # Assert
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype
    assert out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()  # bit-exact, NaN payloads and -0.0 included


def test_zero_dimensional_arrays_keep_their_shape() -> None:
    # Prepare
    arr = np.array(2.5, dtype=np.float32)

    # Execute
    out = unpack(pack(arr))

    # Assert
    assert out.shape == ()
    assert out.dtype == arr.dtype
    assert float(out) == 2.5


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i8", ">i4", ">u4"])
def test_big_endian_arrays_arrive_little_endian_with_the_same_values(dtype: str) -> None:
    # Prepare
    arr = np.array([[1, 2, 3], [4, 5, 2**20]]).astype(dtype)

    # Execute
    out = unpack(pack(arr))

    # Assert
    assert out.dtype == np.dtype(dtype).newbyteorder("<")
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_non_contiguous_arrays_round_trip_by_value() -> None:
    # Prepare
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    views = [base.T, base[:, ::2], base[::-1]]

    # Execute
    outs = [unpack(pack(v)) for v in views]

    # Assert
    for view, out in zip(views, outs, strict=True):
        assert out.shape == view.shape
        np.testing.assert_array_equal(out, view)


def test_numpy_scalars_become_plain_numbers() -> None:
    # Prepare
    obj = {"f": np.float32(1.5), "i": np.int64(-3), "b": np.bool_(True)}

    # Execute
    out = unpack(pack(obj))

    # Assert
    assert out == {"f": 1.5, "i": -3, "b": True}
    assert type(out["i"]) is int


def test_pack_refuses_unknown_objects() -> None:
    # Prepare
    obj = {"x": object()}

    # Execute / Assert
    with pytest.raises(TypeError, match="cannot encode object"):
        pack(obj)


@pytest.mark.parametrize("dtype", ["O", "<f2", "<i2"])
def test_pack_refuses_dtypes_that_cannot_be_decoded(dtype: str) -> None:
    # Prepare
    arr = np.zeros(3, dtype=dtype)

    # Execute / Assert
    with pytest.raises(TypeError):
        pack(arr)


# --- malformed input is always DecodeError ----------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_never_escape_as_another_exception(data: bytes) -> None:
    # Prepare: nothing beyond the bytes

    # Execute / Assert: either a message or DecodeError, for every target
    for model in (RoundRequested, SagaEvent, DeviceCommand, DeviceStatus):
        try:
            out = decode(data, model)
        except DecodeError:
            continue
        assert isinstance(out, Message)


@FUZZ
@given(data=st.binary(max_size=256), code=st.integers(-128, 127))
def test_random_ext_payloads_never_escape_as_another_exception(data: bytes, code: int) -> None:
    # Prepare
    wire = _ext(data, code)

    # Execute / Assert (ext -1 is msgpack's own timestamp, which no field accepts)
    try:
        out = unpack(wire)
    except DecodeError:
        return
    assert isinstance(out, np.ndarray | msgpack.Timestamp)


@FUZZ
@given(
    dtype=st.one_of(
        st.sampled_from([*ALLOWED_DTYPES, "O", "|O", "<f2", ">f4", "<c8", "x"]),
        st.integers(-(2**63), 2**64 - 1),
        st.none(),
        st.lists(st.integers(-(2**63), 2**63), max_size=2),
    ),
    shape=st.one_of(
        st.lists(st.integers(-3, 2**40), max_size=10),
        st.integers(-3, 2**40),
        st.text(max_size=3),
        st.lists(st.booleans(), max_size=3),
    ),
    raw=st.one_of(st.binary(max_size=64), st.text(max_size=8), st.integers(0, 9)),
)
def test_crafted_array_headers_never_escape_as_another_exception(
    dtype: object,
    shape: object,
    raw: object,
) -> None:
    # Prepare
    wire = _ext([dtype, shape, raw])

    # Execute / Assert
    try:
        out = unpack(wire)
    except DecodeError:
        return
    assert isinstance(out, np.ndarray)
    assert out.dtype.str in ALLOWED_DTYPES
    assert out.nbytes == len(raw)  # type: ignore[arg-type]


@FUZZ
@given(data=st.data())
def test_mutated_messages_never_escape_as_another_exception(data: st.DataObject) -> None:
    # Prepare
    message = data.draw(st.sampled_from(SAMPLES))
    wire = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))

    # Execute / Assert
    try:
        out = decode(bytes(wire), type(message))
    except DecodeError:
        return
    assert type(out) is type(message)


@pytest.mark.parametrize("message", TRUNCATED, ids=_ids(TRUNCATED))
def test_every_truncation_is_a_decode_error(message: Message) -> None:
    # Prepare
    wire = encode(message)

    # Execute / Assert
    for cut in range(len(wire)):
        with pytest.raises(DecodeError):
            decode(wire[:cut], type(message))


def test_trailing_bytes_are_a_decode_error() -> None:
    # Prepare
    wire = encode(_request()) + b"\xc0"

    # Execute / Assert
    with pytest.raises(DecodeError, match="not msgpack"):
        decode(wire, RoundRequested)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        42,
        "r1",
        ["r1"],
        {"round_id": 17},
        {"round_id": ["r1"]},
        {"round_id": "r1", "cohort_size": "many"},
        {"round_id": "r1", "cohort_size": [3]},
        {"round_id": "r1", "layer_sizes": "64,10"},
        {"round_id": "r1", "target_accuracy": {"x": 1}},
        {"round_id": "r1", "simulate_failure": "explode"},
        {"round_id": "r1", "simulate_failure": 1.5},
        {"model_name": "no-round-id"},
    ],
    ids=repr,
)
def test_wrong_types_are_a_decode_error(obj: object) -> None:
    # Prepare
    wire = pack(obj)

    # Execute / Assert
    with pytest.raises(DecodeError):
        decode(wire, RoundRequested)


def test_decode_error_names_the_offending_field() -> None:
    # Prepare
    wire = pack({"round_id": "r1", "cohort_size": 0})

    # Execute
    with pytest.raises(DecodeError) as info:
        decode(wire, RoundRequested)

    # Assert
    assert "cohort_size" in info.value.reason


@pytest.mark.parametrize("model", [SagaEvent, DeviceCommand], ids=["SagaEvent", "DeviceCommand"])
def test_unknown_kind_is_a_decode_error(model: object) -> None:
    # Prepare
    obj = {**RoundFailed(round_id="r1", step=1, reason="x").model_dump(), "kind": "round.exploded"}

    # Execute / Assert
    with pytest.raises(DecodeError):
        decode(pack(obj), model)


def test_missing_kind_is_a_decode_error_for_a_union() -> None:
    # Prepare
    obj = RoundFailed(round_id="r1", step=1, reason="x").model_dump()
    del obj["kind"]

    # Execute / Assert
    with pytest.raises(DecodeError):
        decode(pack(obj), SagaEvent)


def test_a_message_of_another_family_is_a_decode_error() -> None:
    # Prepare
    wire = encode(StopCommand(round_id="r1"))

    # Execute / Assert
    with pytest.raises(DecodeError):
        decode(wire, SagaEvent)


def test_kind_of_another_class_is_a_decode_error() -> None:
    # Prepare
    obj = {**_request().model_dump(), "kind": "nodes.selected"}

    # Execute / Assert
    with pytest.raises(DecodeError):
        decode(pack(obj), RoundRequested)


@pytest.mark.parametrize("message", SAMPLES, ids=_ids(SAMPLES))
def test_extra_fields_are_a_decode_error(message: Message) -> None:
    # Prepare
    obj = {**message.model_dump(), "surprise": 1}

    # Execute / Assert
    with pytest.raises(DecodeError, match="surprise"):
        decode(pack(obj), type(message))


def test_extra_fields_in_a_nested_message_are_a_decode_error() -> None:
    # Prepare
    selected = next(m for m in SAMPLES if isinstance(m, NodesSelected))
    obj = selected.model_dump()
    obj["request"]["surprise"] = True

    # Execute / Assert
    with pytest.raises(DecodeError):
        decode(pack(obj), SagaEvent)


def test_payload_over_max_bytes_is_refused_and_at_max_bytes_accepted() -> None:
    # Prepare
    request = _request()
    wire = encode(request)

    # Execute
    accepted = decode(wire, RoundRequested, max_bytes=len(wire))

    # Assert
    assert accepted == request
    with pytest.raises(DecodeError, match="exceeds"):
        decode(wire, RoundRequested, max_bytes=len(wire) - 1)


def test_payload_over_the_default_limit_is_refused() -> None:
    # Prepare
    wire = b"\x00" * (MAX_MESSAGE_BYTES + 1)

    # Execute / Assert
    with pytest.raises(DecodeError, match="exceeds"):
        decode(wire, RoundRequested)


def test_blob_over_max_blob_is_a_decode_error() -> None:
    # Prepare
    payload = next(m for m in SAMPLES if isinstance(m, ModelPayload))
    obj = {**payload.model_dump(), "blob": b"\x00" * (MAX_BLOB + 1)}

    # Execute / Assert
    with pytest.raises(DecodeError, match="blob"):
        decode(pack(obj), ModelPayload)


def test_array_ext_with_object_dtype_is_refused() -> None:
    # Prepare: a would-be pickle/pointer array
    wire = _ext(["|O", [2], b"\x00" * 16])

    # Execute / Assert
    with pytest.raises(DecodeError, match="not allowed"):
        unpack(wire)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (["<f4", [3], b"\x00" * 8], "do not match"),
        (["<f4", [3], b"\x00" * 16], "do not match"),
        (["<f8", [2, 2], b"\x00" * 24], "do not match"),
        (["<f4", [-1], b"\x00" * 4], "shape"),
        (["<f4", [1] * 9, b"\x00" * 4], "shape"),
        (["<f4", "3", b"\x00" * 12], "shape"),
        (["<f4", [1.5], b"\x00" * 4], "shape"),
        ([">f4", [1], b"\x00" * 4], "not allowed"),
        (["<f2", [1], b"\x00" * 2], "not allowed"),
    ],
    ids=repr,
)
def test_bad_array_headers_are_refused(header: list[object], match: str) -> None:
    # Prepare
    wire = _ext(header)

    # Execute / Assert
    with pytest.raises(DecodeError, match=match):
        unpack(wire)


@pytest.mark.parametrize(
    "header", [["<f4", [1]], ["<f4", [1], b"\0" * 4, 0], {"d": 1}, 7], ids=repr
)
def test_malformed_array_envelopes_are_refused(header: object) -> None:
    # Prepare
    wire = _ext(header)

    # Execute / Assert
    with pytest.raises(DecodeError):
        unpack(wire)


def test_unknown_ext_type_is_refused() -> None:
    # Prepare
    wire = _ext(["<f4", [1], b"\x00" * 4], code=2)

    # Execute / Assert
    with pytest.raises(DecodeError, match="ext type 2"):
        unpack(wire)


def test_array_in_a_message_field_is_a_decode_error() -> None:
    # Prepare: a valid array where a string belongs
    wire = pack({"round_id": np.zeros(2, dtype=np.float32)})

    # Execute / Assert
    with pytest.raises(DecodeError, match="round_id"):
        decode(wire, RoundRequested)


@pytest.mark.parametrize("data", [None, 42, 1.5, "fl/ops", ["a"], {"round_id": "r1"}], ids=repr)
def test_non_bytes_input_is_a_decode_error(data: object) -> None:
    # Prepare: nothing beyond the input

    # Execute / Assert
    with pytest.raises(DecodeError, match="not bytes"):
        decode(data, RoundRequested)  # type: ignore[arg-type]


@pytest.mark.parametrize("wrap", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_bytes_like_input_is_accepted(wrap: type) -> None:
    # Prepare
    wire = wrap(encode(_request()))

    # Execute
    out = decode(wire, RoundRequested)

    # Assert
    assert out.round_id == "r-1"


# --- JSON from operators ------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [decode_json, decode_any], ids=["decode_json", "decode_any"])
def test_operator_json_round_request_is_accepted(fn: typing.Callable[..., RoundRequested]) -> None:
    # Prepare: what `mosquitto_pub -t fl/ops/round/start -m '{"round_id": "r1"}'` sends
    data = b'{"round_id": "r1"}'

    # Execute
    out = fn(data, RoundRequested)

    # Assert
    assert isinstance(out, RoundRequested)
    assert out.round_id == "r1"
    assert out.simulate_failure is Chaos.NONE
    assert out.layer_sizes == (64, 32, 10)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, Chaos.PARTICIPATION),
        (False, Chaos.NONE),
        (None, Chaos.NONE),
        ("deployment", Chaos.DEPLOYMENT),
    ],
    ids=repr,
)
def test_operator_json_simulate_failure(value: object, expected: Chaos) -> None:
    # Prepare
    data = json.dumps({"round_id": "r1", "simulate_failure": value}).encode()

    # Execute
    out = decode_any(data, RoundRequested)

    # Assert
    assert out.simulate_failure is expected


def test_decode_any_still_reads_msgpack() -> None:
    # Prepare
    wire = encode(_request())

    # Execute
    out = decode_any(wire, RoundRequested)

    # Assert
    assert out == decode(wire, RoundRequested)


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b'{"round_id": ',
        b"{round_id: r1}",
        b"{'round_id': 'r1'}",
        b'{"round_id": "r1"}}',
        b"{\xff\xfe}",
        b'{"round_id": "r1", "surprise": 1}',
        b'{"round_id": "r 1"}',
        b"{}",
    ],
    ids=repr,
)
@pytest.mark.parametrize("fn", [decode_json, decode_any], ids=["decode_json", "decode_any"])
def test_bad_json_is_a_decode_error(fn: typing.Callable[..., object], data: bytes) -> None:
    # Prepare: nothing beyond the input

    # Execute / Assert
    with pytest.raises(DecodeError):
        fn(data, RoundRequested)


@pytest.mark.parametrize("data", [b"", b"null", b"[]", b'"r1"', b"\xff"], ids=repr)
def test_json_that_is_not_an_object_is_a_decode_error(data: bytes) -> None:
    # Prepare: nothing beyond the input

    # Execute / Assert
    with pytest.raises(DecodeError):
        decode_json(data, RoundRequested)


@FUZZ
@given(text=st.text(max_size=64))
def test_random_json_text_never_escapes_as_another_exception(text: str) -> None:
    # Prepare
    data = ("{" + text).encode()

    # Execute / Assert
    try:
        out = decode_any(data, RoundRequested)
    except DecodeError:
        return
    assert isinstance(out, RoundRequested)


def test_deeply_nested_json_is_a_decode_error() -> None:
    # Prepare: one mosquitto_pub away from crashing a service's dispatch loop
    data = b'{"round_id": ' + b"[" * 100_000

    # Execute / Assert
    with pytest.raises(DecodeError):
        decode_any(data, RoundRequested)


@pytest.mark.parametrize("fn", [decode_json, decode_any], ids=["decode_json", "decode_any"])
@pytest.mark.parametrize("data", [None, 42], ids=repr)
def test_non_bytes_json_input_is_a_decode_error(
    fn: typing.Callable[..., object],
    data: object,
) -> None:
    # Prepare: nothing beyond the input

    # Execute / Assert
    with pytest.raises(DecodeError):
        fn(data, RoundRequested)


@pytest.mark.parametrize(
    "data",
    [b' {"round_id": "r2"}', b'\n\t{"round_id": "r2"}\r\n'],
    ids=["leading-space", "leading-newline"],
)
def test_json_after_whitespace_is_still_json(data: bytes) -> None:
    assert decode_any(data, RoundRequested).round_id == "r2"


def test_a_json_array_is_refused_as_json_not_as_broken_msgpack() -> None:
    with pytest.raises(DecodeError, match="JSON payload must be one object"):
        decode_any(b'[{"round_id": "r2"}]', RoundRequested)


def test_a_cohort_below_the_minimum_is_refused_by_the_request() -> None:
    with pytest.raises(ValidationError, match="below min_participating_nodes"):
        RoundRequested(round_id="r1", cohort_size=2, min_participating_nodes=3)


def test_a_validation_error_reads_as_one_line_naming_the_field_or_option() -> None:
    with pytest.raises(ValidationError) as caught:
        RoundRequested(round_id="r1", learning_rate=-1)
    assert first_error(caught.value) == "learning_rate: Input should be greater than 0"
    assert first_error(caught.value, options=True).startswith("--learning-rate: ")
    with pytest.raises(ValidationError) as whole:
        RoundRequested(round_id="r1", cohort_size=2, min_participating_nodes=3)
    assert first_error(whole.value, whole="request").startswith("request: cohort_size 2 is")
