"""The topic map: the single source of truth for every MQTT topic fedsaga uses."""

import re

_DEVICE = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)

ROUND_START = "fl/ops/round/start"
ROUND_STOP = "fl/ops/round/stop"

# Saga events: fl/round/{round_id}/{event}
ROUND_EVENT = "fl/round/{round_id}/{event}"
ROUND_ALL = "fl/round/+/+"
COMPENSATED = "fl/round/{round_id}/compensated/{step}"
COMPENSATED_ALL = "fl/round/+/compensated/+"

# Device topics
DEVICE_CMD = "fl/device/{device_id}/cmd"
DEVICE_MODEL = "fl/device/{device_id}/model"
DEVICE_STATUS = "fl/device/{device_id}/status"
DEVICE_UPDATE = "fl/device/{device_id}/update"
DEVICE_REPORT = "fl/device/{device_id}/report"
# Why a service refused a message the device sent (only that device may read it).
DEVICE_REJECTED = "fl/device/{device_id}/rejected"
ALL_STATUS = "fl/device/+/status"
ALL_UPDATES = "fl/device/+/update"
ALL_REPORTS = "fl/device/+/report"

ERRORS = "fl/errors/{service}"
ALL_ERRORS = "fl/errors/+"
# A service instance's connection probe: published at QoS 1 (nobody subscribes) so a dead
# connection shows up as a missing PUBACK.
PROBE = "fl/probe/{identity}"


def round_event(round_id: str, event: str) -> str:
    """Topic of one saga event of one round."""
    return ROUND_EVENT.format(round_id=round_id, event=event)


def round_filter(event: str) -> str:
    """Subscription filter for one saga event across all rounds."""
    return ROUND_EVENT.format(round_id="+", event=event)


def compensated(round_id: str, step: int) -> str:
    """Topic announcing that a step's compensation has run."""
    return COMPENSATED.format(round_id=round_id, step=step)


def compensated_filter(step: int) -> str:
    """Subscription filter for one step's compensation across all rounds."""
    return COMPENSATED.format(round_id="+", step=step)


def device(template: str, device_id: str) -> str:
    """Fill a per-device topic template."""
    return template.format(device_id=device_id)


def device_of(topic: str) -> str:
    """The device id in `fl/device/{id}/...`."""
    parts = topic.split("/")
    if (
        len(parts) < 4
        or parts[0] != "fl"
        or parts[1] != "device"
        or not _DEVICE.fullmatch(parts[2])
    ):
        raise ValueError(f"not a device topic: {topic}")
    return parts[2]


def errors(service: str) -> str:
    """Where a service reports input it rejected."""
    return ERRORS.format(service=service)


def probe(identity: str) -> str:
    """Where a service instance probes its own connection."""
    return PROBE.format(identity=identity)
