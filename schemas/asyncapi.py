"""The contract as an AsyncAPI 3.0 document, generated from the models and the topic map.

`build()` returns the document as plain data, ready for JSON; `main()` writes it to
`docs/asyncapi.json` (`python -m schemas.asyncapi`). A test regenerates it and compares, and
the AsyncAPI project's own parser validates it (tests/contract/).

The document describes the fedsaga services as one application, as AsyncAPI 3 asks: an
operation's `action` is what the services do on its channel (`send`: they publish there;
`receive`: they subscribe). Each operation also names every party in `x-publishers` and
`x-subscribers` (device, operator, services, broker), so a device maker reads its own side
without turning the verbs around. Payloads are JSON Schema from `model_json_schema`: what the
services accept for messages they receive, and for messages they send every field, since they
always send every field. Prose: docs/device-protocol.md.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from schemas import topics
from schemas.base import SCHEMA_VERSION
from schemas.device import (
    DeviceCommand,
    DeviceRejected,
    DeviceReport,
    DeviceStatus,
    DeviceUpdate,
    ModelPayload,
)
from schemas.events import ErrorReport, SagaEvent, StepCompensated
from schemas.ops import RoundRequested, RoundStopRequested
from schemas.steps import STEP_NAMES, Step

ASYNCAPI_VERSION = "3.0.0"
MQTT_BINDING_VERSION = "0.2.0"
MSGPACK = "application/msgpack"
JSON = "application/json"
QOS = 1  # every message, both ways
MAX_PACKET_BYTES = 16 * 1024 * 1024  # max_packet_size in mosquitto/dev.conf and prod.conf
# A device's session (edge_client/agent.py keeps to these; docs/device-protocol.md explains).
DEVICE_KEEPALIVE_S = 10
DEVICE_SESSION_EXPIRY_S = 3600
DEVICE_STATUS_INTERVAL_S = 60
# Topics of topics.py the contract leaves out: between a service instance and the broker only.
INTERNAL_TOPICS = frozenset({topics.PROBE})
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.json"

Party = Literal["device", "operator", "services", "broker"]


@dataclass(frozen=True)
class Channel:
    """One topic of the contract: its messages, who publishes and who subscribes."""

    key: str
    address: str
    messages: tuple[type[BaseModel], ...]
    action: Literal["send", "receive"]  # what the services do there
    publishers: tuple[Party, ...]
    subscribers: tuple[Party, ...]
    description: str
    retain: bool = False
    json_too: bool = False  # JSON is accepted besides msgpack (hand-written by operators)


PARAMETERS: dict[str, dict[str, Any]] = {
    "device_id": {
        "description": "The device's id, also its MQTT client id and username: "
        "1 to 64 of A-Z a-z 0-9 _ . -"
    },
    "round_id": {"description": "The round's id: 1 to 64 of A-Z a-z 0-9 _ . -"},
    "step": {
        "description": "The compensated saga step, 1 (select) to 6 (deploy)",
        "enum": [str(int(s)) for s in Step],
    },
    "service": {
        "description": "The service that refused the input",
        "enum": [STEP_NAMES[s] for s in Step],
    },
}


def _members(union: Any) -> tuple[type[BaseModel], ...]:
    """The models of an annotated, discriminated union such as `DeviceCommand`."""
    members: tuple[type[BaseModel], ...] = get_args(get_args(union)[0])
    return members


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _event_channel(model: type[BaseModel]) -> Channel:
    topic_name: str = getattr(model, "topic_name")  # noqa: B009 (a ClassVar of every Event)
    if model is StepCompensated:
        address = topics.COMPENSATED
    else:
        address = topics.ROUND_EVENT.format(round_id="{round_id}", event=topic_name)
    return Channel(
        key=_camel(topic_name),
        address=address,
        messages=(model,),
        action="send",
        publishers=("services",),
        subscribers=("services", "operator"),
        description="A saga event; services choreograph the round on these and operators "
        "watch them (devices cannot read them).",
    )


def channels() -> list[Channel]:
    """Every channel of the contract, devices' first."""
    return [
        Channel(
            "deviceStatus",
            topics.DEVICE_STATUS,
            (DeviceStatus,),
            "receive",
            ("device", "broker"),
            ("services",),
            "The device's state, retained: on every connect, after a change, every "
            f"{DEVICE_STATUS_INTERVAL_S} s while idle, and as its last will (state offline), "
            "which the broker publishes for it.",
            retain=True,
        ),
        Channel(
            "deviceCmd",
            topics.DEVICE_CMD,
            _members(DeviceCommand),
            "send",
            ("services",),
            ("device",),
            "Commands to one device: train, stop, revoke, deploy, rollback.",
        ),
        Channel(
            "deviceModel",
            topics.DEVICE_MODEL,
            (ModelPayload,),
            "send",
            ("services",),
            ("device",),
            "Weights for one device: a delta against a model it holds, or a full model.",
        ),
        Channel(
            "deviceUpdate",
            topics.DEVICE_UPDATE,
            (DeviceUpdate,),
            "receive",
            ("device",),
            ("services",),
            "The device's trained update for one iteration.",
        ),
        Channel(
            "deviceReport",
            topics.DEVICE_REPORT,
            (DeviceReport,),
            "receive",
            ("device",),
            ("services",),
            "Progress, failure with its reason, and canary health.",
        ),
        Channel(
            "deviceRejected",
            topics.DEVICE_REJECTED,
            (DeviceRejected,),
            "send",
            ("services",),
            ("device",),
            "Why a service refused a message this device sent on its status, update or "
            "report topic; only this device may read it.",
        ),
        Channel(
            "roundStart",
            topics.ROUND_START,
            (RoundRequested,),
            "receive",
            ("operator",),
            ("services",),
            "An operator starts a round: msgpack, or a JSON object (mosquitto_pub -m '{...}').",
            json_too=True,
        ),
        Channel(
            "roundStop",
            topics.ROUND_STOP,
            (RoundStopRequested,),
            "receive",
            ("operator",),
            ("services",),
            "An operator cancels a running round; the steps done compensate in reverse order.",
            json_too=True,
        ),
        Channel(
            "errors",
            topics.ERRORS,
            (ErrorReport,),
            "send",
            ("services",),
            ("operator",),
            "Input a service refused, with the reason; nothing else happened.",
        ),
        *(_event_channel(m) for m in _members(SagaEvent)),
    ]


class _WireSchema(GenerateJsonSchema):
    """JSON Schema of the wire: a message the services send carries every field."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        """Every field is required of a sent (`serialization`) message: model_dump sends all."""
        return self.mode == "serialization" or super().field_is_required(field, total)


def _schemas(chans: Sequence[Channel]) -> tuple[dict[str, str], dict[str, Any]]:
    """Map each message name to its payload schema's name; return those and every schema."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for ch in chans:
        mode: JsonSchemaMode = "validation" if ch.action == "receive" else "serialization"
        for model in ch.messages:
            wanted[(model, mode)] = None
    refs, top = models_json_schema(
        list(wanted), ref_template="#/components/schemas/{model}", schema_generator=_WireSchema
    )
    names = {model.__name__: ref["$ref"].rsplit("/", 1)[1] for (model, _), ref in refs.items()}
    defs: dict[str, Any] = top.get("$defs", {})
    return names, defs


def _summary(model: type[BaseModel]) -> str:
    return (model.__doc__ or model.__name__).strip().split("\n\n")[0].replace("\n", " ")


def _message(model: type[BaseModel], schema_name: str, content_type: str) -> dict[str, Any]:
    return {
        "name": model.__name__,
        "title": model.__name__,
        "summary": _summary(model),
        "contentType": content_type,
        "payload": {"$ref": f"#/components/schemas/{schema_name}"},
    }


def _message_names(ch: Channel) -> list[str]:
    names = [m.__name__ for m in ch.messages]
    return names + [f"{n}Json" for n in names] if ch.json_too else names


def _channel(ch: Channel) -> dict[str, Any]:
    params = re.findall(r"\{(\w+)\}", ch.address)
    out: dict[str, Any] = {"address": ch.address, "description": ch.description}
    if params:
        out["parameters"] = {p: PARAMETERS[p] for p in params}
    out["messages"] = {n: {"$ref": f"#/components/messages/{n}"} for n in _message_names(ch)}
    return out


def _operation(ch: Channel) -> dict[str, Any]:
    verb = "publish" if ch.action == "send" else "subscribe to"
    return {
        "action": ch.action,
        "channel": {"$ref": f"#/channels/{ch.key}"},
        "summary": f"The services {verb} {ch.address} ({', '.join(ch.publishers)} -> "
        f"{', '.join(ch.subscribers)}).",
        "messages": [{"$ref": f"#/channels/{ch.key}/messages/{n}"} for n in _message_names(ch)],
        "bindings": {
            "mqtt": {"qos": QOS, "retain": ch.retain, "bindingVersion": MQTT_BINDING_VERSION}
        },
        "x-publishers": list(ch.publishers),
        "x-subscribers": list(ch.subscribers),
    }


def _device_session() -> dict[str, Any]:
    """The session a device opens (the servers' MQTT binding)."""
    return {
        "clientId": "{device_id}",
        "cleanSession": False,
        "keepAlive": DEVICE_KEEPALIVE_S,
        "sessionExpiryInterval": DEVICE_SESSION_EXPIRY_S,
        "maximumPacketSize": MAX_PACKET_BYTES,
        "lastWill": {
            "topic": topics.DEVICE_STATUS,
            "qos": QOS,
            "retain": True,
            "message": "DeviceStatus (msgpack) with state offline and a fresh msg_id "
            "for each connection",
        },
        "bindingVersion": MQTT_BINDING_VERSION,
    }


INFO_DESCRIPTION = f"""\
What devices, operators and the six fedsaga services say to each other over MQTT 5.

* Every message is a msgpack map whose keys are the field names of its payload schema
  (`kind` tells the messages of one channel apart). Byte fields (`format: binary`) are msgpack
  bin, times are integer milliseconds since the Unix epoch, absent values are nil.
  `fl/ops/round/start` also accepts a JSON object.
* QoS {QOS} in both directions; only a device's status is retained.
* `action` is what the services do: `send` means they publish on the channel, `receive` that
  they subscribe. `x-publishers` and `x-subscribers` name every party.
* The servers' MQTT binding is the session a device opens: client id = device id,
  clean start off, session expiry {DEVICE_SESSION_EXPIRY_S} s, keepalive {DEVICE_KEEPALIVE_S} s,
  and a last will on its status topic.
* Weight blobs, the digest framing and the order of commands: docs/device-protocol.md.

Generated from `schemas/` by `python -m schemas.asyncapi`; do not edit by hand."""


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the contract."""
    chans = channels()
    schema_names, schemas = _schemas(chans)
    messages: dict[str, Any] = {}
    for ch in chans:
        for model in ch.messages:
            messages[model.__name__] = _message(model, schema_names[model.__name__], MSGPACK)
            if ch.json_too:
                json_message = _message(model, schema_names[model.__name__], JSON)
                messages[f"{model.__name__}Json"] = {
                    **json_message,
                    "name": f"{model.__name__}Json",
                }
    session = {"mqtt": _device_session()}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "fedsaga: the device contract",
            "version": str(SCHEMA_VERSION),
            "description": INFO_DESCRIPTION,
        },
        "defaultContentType": MSGPACK,
        "servers": {
            "production": {
                "host": "{broker}:8883",
                "protocol": "secure-mqtt",
                "protocolVersion": "5",
                "description": "mosquitto/prod.conf: TLS, a password per client, the ACL of "
                "mosquitto/fedsaga.acl. A device logs in with its device id as username; the "
                "broker makes the username the client id.",
                "variables": {"broker": {"description": "The broker's host name"}},
                "security": [{"$ref": "#/components/securitySchemes/password"}],
                "bindings": session,
            },
            "development": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "mosquitto/dev.conf: loopback only, anonymous.",
                "bindings": session,
            },
        },
        "channels": {ch.key: _channel(ch) for ch in chans},
        "operations": {
            f"{ch.action}{ch.key[0].upper()}{ch.key[1:]}": _operation(ch) for ch in chans
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "password": {
                    "type": "userPassword",
                    "description": "A device's username is its device id; each service "
                    "instance's is fedsaga-{service}-{instance}; operators' is fedsaga-ops.",
                }
            },
        },
    }


def render() -> str:
    """The document as the JSON text committed at docs/asyncapi.json."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Write the document (to docs/asyncapi.json, or the path given)."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else DEFAULT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
