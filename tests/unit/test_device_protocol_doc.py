"""docs/device-protocol.md stays true: its byte examples are what our code produces, and it
names every field, message kind and failure reason a device deals with."""

from __future__ import annotations

import hashlib
import re

import msgpack
import numpy as np
import pytest
import zstandard

from federated.params import digest
from federated.payload import make_payload, read_payload
from schemas.asyncapi import DEFAULT_PATH
from schemas.device import (
    DeployCommand,
    DeviceRejected,
    DeviceReport,
    DeviceStatus,
    DeviceUpdate,
    FailureReason,
    ModelPayload,
    RevokeCommand,
    RollbackCommand,
    StopCommand,
    TrainCommand,
)

SPEC = DEFAULT_PATH.with_name("device-protocol.md")
DEVICE_MODELS = [
    DeviceStatus,
    ModelPayload,
    TrainCommand,
    StopCommand,
    RevokeCommand,
    DeployCommand,
    RollbackCommand,
    DeviceUpdate,
    DeviceReport,
    DeviceRejected,
]
REPORTED = [
    FailureReason.BATTERY_DIED,
    FailureReason.NETWORK_TIMEOUT,
    FailureReason.DEVICE_SUSPENDED,
    FailureReason.LOW_BATTERY,
    FailureReason.MODEL_UNAVAILABLE,
    FailureReason.BAD_PAYLOAD,
]
EXAMPLE = {
    "w0": np.array([[0.5, -0.25]], dtype=np.float32),
    "b0": np.array([0.125], dtype=np.float32),
}


def _text() -> str:
    return SPEC.read_text(encoding="utf-8")


def _example_bytes(name: str) -> bytes:
    """The hex of the fenced block after `<!-- example: name -->`, comments dropped."""
    block = re.search(rf"<!-- example: {name} -->\n```text\n(.*?)```", _text(), re.S)
    assert block is not None, name
    lines = (line.split("#", 1)[0] for line in block.group(1).splitlines())
    return bytes.fromhex("".join(lines).replace(" ", ""))


def _stated_digest() -> str:
    found = re.search(r"<!-- example: digest -->\n.*?`([0-9a-f]{64})`", _text(), re.S)
    assert found is not None
    return found.group(1)


def test_the_payload_example_is_what_the_services_send() -> None:
    # Prepare
    blob, rebuilt = make_payload(EXAMPLE, None, rng=np.random.default_rng(0))

    # Execute
    documented = _example_bytes("payload-msgpack")

    # Assert: the same bytes, and they read back as a valid payload
    assert documented == zstandard.ZstdDecompressor().decompress(blob)
    payload = read_payload(zstandard.ZstdCompressor().compress(documented))
    assert payload.digest == digest(rebuilt) == _stated_digest()
    assert msgpack.unpackb(documented)["tensors"][0]["q"] == b"\x7f\xc0"
    assert blob[:6] == bytes.fromhex("28b52ffd20c0")  # magic, descriptor, content size 192


def test_the_digest_example_frames_the_rebuilt_model() -> None:
    # Prepare
    _, rebuilt = make_payload(EXAMPLE, None, rng=np.random.default_rng(0))

    # Execute
    framing = _example_bytes("digest-framing")

    # Assert
    assert len(framing) == 80
    assert hashlib.sha256(framing).hexdigest() == digest(rebuilt) == _stated_digest()


@pytest.mark.parametrize("model", DEVICE_MODELS, ids=lambda m: m.__name__)
def test_every_field_and_kind_of_a_device_message_is_specified(model: type) -> None:
    # Prepare
    text = _text()
    section = re.search(rf"### [0-9.]+ [^\n]*`{model.__name__}`(.*?)\n###? ", text, re.S)
    assert section is not None, f"no section for {model.__name__}"

    # Execute: each field in its section, or among the common fields before section 4
    common = text[: text.index("## 4.")]
    missing = [f for f in model.model_fields if f"`{f}`" not in section.group(1) + common]

    # Assert
    assert missing == []
    assert f'`kind: "{model.model_fields["kind"].default}"`' in text


@pytest.mark.parametrize("reason", REPORTED, ids=str)
def test_every_failure_reason_a_device_reports_is_specified(reason: FailureReason) -> None:
    # Prepare / Execute / Assert
    assert f"| `{reason.value}` |" in _text()
