"""Device commands (services -> device) and device messages (device -> services)."""

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from schemas.base import DeviceId, Digest, Message, RoundId
from schemas.ops import Chaos

MAX_BLOB = 8 * 1024 * 1024


DeviceState = Literal["idle", "training", "paused", "offline"]
ReportStatus = Literal[
    "training", "failed", "stopped", "revoked", "deployed", "rolled_back", "deploy_failed"
]


class DeviceStatus(Message):
    """Retained on `fl/device/{id}/status`; the last will publishes `state="offline"`."""

    kind: Literal["device.status"] = "device.status"
    device_id: DeviceId
    state: DeviceState = "idle"
    battery: float = Field(default=1.0, ge=0.0, le=1.0)
    charging: bool = False
    network: Literal["wifi", "cellular", "none"] = "wifi"
    memory_mb: int = Field(default=512, ge=0)
    num_examples: int = Field(default=0, ge=0)
    model_version: str | None = None
    model_digest: Digest | None = None


class ModelPayload(Message):
    """Weights for a device on `fl/device/{id}/model`: a quantized zstd delta against
    `base_digest` (the model the device holds) or a full model when that is None."""

    kind: Literal["model.payload"] = "model.payload"
    purpose: Literal["train", "deploy"]
    round_id: RoundId
    iteration: int = Field(default=0, ge=0)
    version: str | None = None
    base_digest: Digest | None
    digest: Digest
    blob: bytes = Field(max_length=MAX_BLOB)


class TrainCommand(Message):
    """Train one iteration from the payload whose reconstruction has `model_digest`."""

    kind: Literal["cmd.train"] = "cmd.train"
    round_id: RoundId
    iteration: int = Field(ge=0)
    model_digest: Digest
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    deadline_ms: int
    chaos: Chaos = Chaos.NONE


class StopCommand(Message):
    """Stop training for a round (compensation of step 3)."""

    kind: Literal["cmd.stop"] = "cmd.stop"
    round_id: RoundId
    reason: str = ""


class RevokeCommand(Message):
    """Delete every weight received for a round (compensation of step 2)."""

    kind: Literal["cmd.revoke"] = "cmd.revoke"
    round_id: RoundId
    reason: str = ""


class DeployCommand(Message):
    """Make the deploy payload with `digest` the device's model; keep the previous one."""

    kind: Literal["cmd.deploy"] = "cmd.deploy"
    round_id: RoundId
    version: str
    digest: Digest
    stage: int = Field(ge=1, le=100)
    chaos: Chaos = Chaos.NONE


class RollbackCommand(Message):
    """Return to the version the device held before `version` was deployed."""

    kind: Literal["cmd.rollback"] = "cmd.rollback"
    round_id: RoundId
    version: str


DeviceCommand = Annotated[
    TrainCommand | StopCommand | RevokeCommand | DeployCommand | RollbackCommand,
    Field(discriminator="kind"),
]


class DeviceUpdate(Message):
    """A trained update on `fl/device/{id}/update`: delta against `base_digest`."""

    kind: Literal["device.update"] = "device.update"
    round_id: RoundId
    iteration: int = Field(ge=0)
    device_id: DeviceId
    base_digest: Digest
    num_examples: int = Field(ge=1)
    train_loss: float
    train_accuracy: float = Field(ge=0.0, le=1.0)
    blob: bytes = Field(max_length=MAX_BLOB)


class FailureReason(StrEnum):
    """Why a device did not finish its part: the one list the device, the services and the
    status view share. The device reports the first six; the coordinator infers the rest."""

    BATTERY_DIED = "battery_died"
    NETWORK_TIMEOUT = "network_timeout"
    DEVICE_SUSPENDED = "device_suspended"
    LOW_BATTERY = "low_battery"  # paused below its battery threshold, not charging
    MODEL_UNAVAILABLE = "model_unavailable"  # the weights to train or deploy never arrived
    BAD_PAYLOAD = "bad_payload"  # the weights arrived but did not decode or verify
    DEADLINE_PASSED = "deadline_passed"  # still training when the iteration closed
    WENT_OFFLINE = "went_offline"  # its last will, and not back within the grace period
    UNKNOWN = "unknown"  # a failure report that gave no reason


class DeviceReport(Message):
    """Progress, failure or health on `fl/device/{id}/report`."""

    kind: Literal["device.report"] = "device.report"
    round_id: RoundId
    device_id: DeviceId
    iteration: int = Field(default=0, ge=0)
    status: ReportStatus
    reason: str | None = None  # a FailureReason when `status` is "failed" or "deploy_failed"
    version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class DeviceRejected(Message):
    """Why a service refused a message the device sent, on `fl/device/{id}/rejected`.

    Nothing the refused message asked for happened; a corrected message needs a new msg_id.
    """

    kind: Literal["device.rejected"] = "device.rejected"
    device_id: DeviceId
    service: str
    topic: str  # where the refused message arrived: the device's update, report or status
    reason: str
    round_id: str | None = None
