"""The AsyncAPI document: generated from schemas/, committed and current, and complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest

from schemas import asyncapi, topics
from schemas.device import (
    DeviceCommand,
    DeviceRejected,
    DeviceReport,
    DeviceStatus,
    DeviceUpdate,
    ModelPayload,
)
from schemas.events import ErrorReport, SagaEvent, StepCompensated
from schemas.ops import RoundRequested

DOC = asyncapi.DEFAULT_PATH


def _members(union: Any) -> list[type]:
    return list(get_args(get_args(union)[0]))


MODELS = [
    DeviceStatus,
    *_members(DeviceCommand),
    ModelPayload,
    DeviceUpdate,
    DeviceReport,
    DeviceRejected,
    RoundRequested,
    ErrorReport,
    *_members(SagaEvent),
]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    """The document as generated now."""
    return asyncapi.build()


def _operation(doc: dict[str, Any], address: str) -> dict[str, Any]:
    key = next(k for k, ch in doc["channels"].items() if ch["address"] == address)
    return next(op for op in doc["operations"].values() if op["channel"]["$ref"].endswith(key))


def test_the_committed_document_is_current() -> None:
    # Prepare
    committed = DOC.read_text(encoding="utf-8")

    # Execute
    generated = asyncapi.render()

    # Assert
    assert committed == generated, (
        "docs/asyncapi.json is stale: .venv/bin/python -m schemas.asyncapi"
    )


def test_main_writes_what_render_returns(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "docs" / "asyncapi.json"

    # Execute
    asyncapi.main([str(out)])

    # Assert
    assert out.read_text(encoding="utf-8") == asyncapi.render()
    assert json.loads(out.read_text(encoding="utf-8"))["asyncapi"] == "3.0.0"


def test_every_topic_of_the_topic_map_is_a_channel(doc: dict[str, Any]) -> None:
    # Prepare: the templates of topics.py (filters with wildcards are the subscribers' side)
    templates = {
        name: value
        for name, value in vars(topics).items()
        if name.isupper() and isinstance(value, str) and "+" not in value
    }
    addresses = {ch["address"] for ch in doc["channels"].values()}

    # Execute
    missing = []
    for name, template in templates.items():
        if template in asyncapi.INTERNAL_TOPICS:
            continue
        if template == topics.ROUND_EVENT:
            wanted = {
                template.format(round_id="{round_id}", event=m.topic_name)
                for m in _members(SagaEvent)
                if m is not StepCompensated
            }
        else:
            wanted = {template}
        missing += [f"{name}: {w}" for w in sorted(wanted - addresses)]

    # Assert
    assert missing == []


def test_every_message_model_has_its_payload_schema(doc: dict[str, Any]) -> None:
    # Prepare
    messages, schemas = doc["components"]["messages"], doc["components"]["schemas"]

    # Execute / Assert
    for model in MODELS:
        message = messages[model.__name__]
        schema = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
        assert set(schema["properties"]) == set(model.model_fields), model.__name__
        assert schema["properties"]["kind"]["const"] == model.model_fields["kind"].default


@pytest.mark.parametrize(
    ("template", "action", "publishers", "subscribers", "retain"),
    [
        (topics.DEVICE_STATUS, "receive", ["device", "broker"], ["services"], True),
        (topics.DEVICE_UPDATE, "receive", ["device"], ["services"], False),
        (topics.DEVICE_REPORT, "receive", ["device"], ["services"], False),
        (topics.DEVICE_CMD, "send", ["services"], ["device"], False),
        (topics.DEVICE_MODEL, "send", ["services"], ["device"], False),
        (topics.DEVICE_REJECTED, "send", ["services"], ["device"], False),
        (topics.ROUND_START, "receive", ["operator"], ["services"], False),
        (topics.ERRORS, "send", ["services"], ["operator"], False),
        (topics.COMPENSATED, "send", ["services"], ["services", "operator"], False),
    ],
)
def test_each_channel_says_who_publishes_and_how(
    doc: dict[str, Any],
    template: str,
    action: str,
    publishers: list[str],
    subscribers: list[str],
    retain: bool,
) -> None:
    # Prepare / Execute
    op = _operation(doc, template)

    # Assert
    assert op["action"] == action
    assert (op["x-publishers"], op["x-subscribers"]) == (publishers, subscribers)
    assert op["bindings"]["mqtt"] == {"qos": 1, "retain": retain, "bindingVersion": "0.2.0"}


def test_payloads_are_msgpack_and_the_operators_messages_json_too(doc: dict[str, Any]) -> None:
    # Prepare
    messages = doc["components"]["messages"]
    start = doc["channels"]["roundStart"]["messages"]
    stop = doc["channels"]["roundStop"]["messages"]

    # Execute
    json_ones = sorted(n for n, m in messages.items() if m["contentType"] == "application/json")

    # Assert
    assert doc["defaultContentType"] == "application/msgpack"
    assert json_ones == ["RoundRequestedJson", "RoundStopRequestedJson"]
    assert set(start) == {"RoundRequested", "RoundRequestedJson"}
    assert set(stop) == {"RoundStopRequested", "RoundStopRequestedJson"}
    assert all(
        m["contentType"] == "application/msgpack"
        for n, m in messages.items()
        if n not in json_ones
    )


def test_what_the_services_send_carries_every_field(doc: dict[str, Any]) -> None:
    # Prepare
    schemas = doc["components"]["schemas"]

    # Execute
    sent = schemas["TrainCommand"]
    received = schemas["DeviceUpdate"]

    # Assert: services send every field; from a device, a defaulted field may be left out
    assert set(sent["required"]) == set(sent["properties"])
    assert "msg_id" not in received["required"]
    assert {"round_id", "base_digest", "blob"} <= set(received["required"])


def test_a_device_session_is_the_servers_binding(doc: dict[str, Any]) -> None:
    # Prepare / Execute
    binding = doc["servers"]["production"]["bindings"]["mqtt"]

    # Assert
    assert binding["cleanSession"] is False
    assert binding["sessionExpiryInterval"] == 3600
    assert binding["keepAlive"] == 10
    assert binding["lastWill"]["topic"] == topics.DEVICE_STATUS
    assert (binding["lastWill"]["qos"], binding["lastWill"]["retain"]) == (1, True)
