"""The fedsaga contract: every event, command and device message, the topic map and the codec.

This package imports nothing else of ours. Services, the edge client and the CLI all speak
through these models; none of them redefines a field.
"""

from schemas import topics
from schemas.codec import decode, decode_json, encode
from schemas.device import (
    DeployCommand,
    DeviceCommand,
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
from schemas.errors import DecodeError, SchemaError
from schemas.events import (
    CanaryStagePassed,
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
from schemas.semver import Version
from schemas.steps import STEP_NAMES, Step

__all__ = [
    "STEP_NAMES",
    "CanaryStagePassed",
    "Chaos",
    "DecodeError",
    "DeployCommand",
    "DeviceCommand",
    "DeviceReport",
    "DeviceStatus",
    "DeviceUpdate",
    "ErrorReport",
    "Event",
    "FailureReason",
    "IterationCompleted",
    "ModelAggregated",
    "ModelDeployed",
    "ModelPayload",
    "ModelValidated",
    "NodesSelected",
    "RevokeCommand",
    "RollbackCommand",
    "RoundCompleted",
    "RoundFailed",
    "RoundRequested",
    "RoundStopRequested",
    "SagaEvent",
    "SchemaError",
    "Step",
    "StepCompensated",
    "StopCommand",
    "TrainCommand",
    "TrainingCompleted",
    "UpdateReceived",
    "Version",
    "WeightsDistributed",
    "decode",
    "decode_json",
    "encode",
    "topics",
]
