"""Saga events, published on `fl/round/{round_id}/{event}` and appended to the round's log."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from schemas.base import DeviceId, Digest, Message, RoundId
from schemas.ops import RoundRequested


class Event(Message):
    """A saga event; `topic_name` is its last topic level."""

    topic_name: ClassVar[str]
    kind: str
    round_id: RoundId


class NodesSelected(Event):
    """Step 1 done: a cohort is leased for this round."""

    topic_name: ClassVar[str] = "nodes_selected"
    kind: Literal["nodes.selected"] = "nodes.selected"
    request: RoundRequested
    cohort: list[DeviceId]
    eligible: int


class WeightsDistributed(Event):
    """Step 2 done for one iteration: every active cohort device got its payload."""

    topic_name: ClassVar[str] = "weights_distributed"
    kind: Literal["weights.distributed"] = "weights.distributed"
    iteration: int = Field(ge=0)
    global_digest: Digest
    recipients: list[DeviceId]
    bytes_sent: int = Field(ge=0)


class UpdateReceived(Event):
    """The aggregator accepted one device's update into the running FedAvg."""

    topic_name: ClassVar[str] = "update_received"
    kind: Literal["update.received"] = "update.received"
    iteration: int = Field(ge=0)
    device_id: DeviceId
    num_examples: int = Field(ge=1)


class TrainingCompleted(Event):
    """Step 3 done for one iteration: quorum reached at or before the deadline."""

    topic_name: ClassVar[str] = "training_completed"
    kind: Literal["training.completed"] = "training.completed"
    iteration: int = Field(ge=0)
    participants: list[DeviceId]
    failures: dict[str, str] = Field(default_factory=dict)


class IterationCompleted(Event):
    """Step 4 done for a non-final iteration: the new global model goes back to the cohort."""

    topic_name: ClassVar[str] = "iteration_completed"
    kind: Literal["iteration.completed"] = "iteration.completed"
    iteration: int = Field(ge=0)
    global_digest: Digest
    num_examples: int = Field(ge=0)  # the FedAvg weight of the iteration, summed
    updates: int = Field(default=0, ge=0)  # how many updates it averaged


class ModelAggregated(Event):
    """Step 4 done: the last iteration's FedAvg is the round's candidate model."""

    topic_name: ClassVar[str] = "model_aggregated"
    kind: Literal["model.aggregated"] = "model.aggregated"
    iterations: int = Field(ge=1)
    digest: Digest
    num_examples: int = Field(default=0, ge=0)  # the last iteration's, as IterationCompleted
    updates: int = Field(default=0, ge=0)


class ModelValidated(Event):
    """Step 5 done: the candidate met its target on the holdout set and got a version."""

    topic_name: ClassVar[str] = "model_validated"
    kind: Literal["model.validated"] = "model.validated"
    digest: Digest
    version: str
    parent_version: str | None
    metrics: dict[str, float]


class ModelDeployed(Event):
    """Step 6 done: the canary passed every stage and the version is active."""

    topic_name: ClassVar[str] = "model_deployed"
    kind: Literal["model.deployed"] = "model.deployed"
    version: str
    stages: list[int]
    devices: int


class CanaryStagePassed(Event):
    """One canary stage's devices run the new version and reported healthy enough."""

    topic_name: ClassVar[str] = "canary_stage_passed"
    kind: Literal["canary.stage_passed"] = "canary.stage_passed"
    version: str
    stage: int = Field(ge=1)
    percent: int = Field(ge=1, le=100)
    devices: int = Field(ge=0)
    healthy: int = Field(ge=0)


class RoundCompleted(Event):
    """Terminal event of a round, success or compensated failure."""

    topic_name: ClassVar[str] = "round_completed"
    kind: Literal["round.completed"] = "round.completed"
    outcome: Literal["succeeded", "failed"]
    version: str | None = None
    reason: str | None = None


class RoundFailed(Event):
    """Step `step` failed: compensations of steps `step`..1 run in reverse order."""

    topic_name: ClassVar[str] = "failed"
    kind: Literal["round.failed"] = "round.failed"
    step: int = Field(ge=1, le=6)
    reason: str


class StepCompensated(Event):
    """A step's compensation has run; the step below compensates next."""

    topic_name: ClassVar[str] = "compensated"
    kind: Literal["step.compensated"] = "step.compensated"
    step: int = Field(ge=1, le=6)
    service: str
    detail: str = ""


class ErrorReport(Message):
    """Input a service rejected, on `fl/errors/{service}`; nothing else happened."""

    kind: Literal["error"] = "error"
    service: str
    topic: str
    reason: str
    round_id: str | None = None


SagaEvent = Annotated[
    NodesSelected
    | WeightsDistributed
    | UpdateReceived
    | TrainingCompleted
    | IterationCompleted
    | ModelAggregated
    | ModelValidated
    | CanaryStagePassed
    | ModelDeployed
    | RoundCompleted
    | RoundFailed
    | StepCompensated,
    Field(discriminator="kind"),
]
