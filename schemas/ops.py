"""What operators send: the round request and the round stop."""

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from schemas.base import Message, RoundId


class Chaos(StrEnum):
    """The seed's `simulate_failure`: a failure the simulated fleet acts out on purpose.

    Real devices ignore it; the fleet simulator's agents honour it, so a demo or test can
    drive each compensation path through the real services.
    """

    NONE = "none"
    PARTICIPATION = "participation"  # most devices fail training: quorum is not reached
    VALIDATION = "validation"  # devices send garbage-but-finite updates: the model regresses
    DEPLOYMENT = "deployment"  # canary devices report a health regression: rollback


class RoundRequested(Message):
    """Start one federated round (the seed's `EdgeFederatedLearningSaga(...)` parameters)."""

    kind: Literal["round.requested"] = "round.requested"
    round_id: RoundId
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "digits-mlp"
    create_model: bool = Field(
        default=False,
        description="start a new lineage if the model has no version yet "
        "(otherwise an unknown model is refused, so a typo cannot deploy a new model)",
    )
    model_version: str | None = Field(
        default=None, description="version to start from; the active version when omitted"
    )
    # Defaults: bench/tune_digits.py's choice for the digits MLP on a non-IID fleet.
    target_accuracy: float = Field(default=0.9, ge=0.0, le=1.0)
    min_participating_nodes: int = Field(default=3, ge=1)
    training_rounds: int = Field(default=25, ge=1, le=1000)
    simulate_failure: Chaos = Chaos.NONE
    cohort_size: int = Field(default=30, ge=1, le=100_000)
    local_epochs: int = Field(default=5, ge=1, le=100)
    batch_size: int = Field(default=16, ge=1, le=4096)
    learning_rate: float = Field(default=0.3, gt=0.0, le=10.0)
    iteration_timeout_ms: int = Field(default=10_000, ge=100, le=3_600_000)
    layer_sizes: tuple[int, ...] = Field(
        default=(64, 32, 10), description="architecture when the model has no version yet"
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @field_validator("simulate_failure", mode="before")
    @classmethod
    def _legacy_bool(cls, value: object) -> object:
        # The seed passed simulate_failure as a bool: True meant a participation failure.
        if value is True:
            return Chaos.PARTICIPATION
        if value is False or value is None:
            return Chaos.NONE
        return value

    @model_validator(mode="after")
    def _cohort_holds_the_minimum(self) -> Self:
        if self.cohort_size < self.min_participating_nodes:
            raise ValueError(
                f"cohort_size {self.cohort_size} is below "
                f"min_participating_nodes {self.min_participating_nodes}: "
                "the round could never reach quorum"
            )
        return self

    @field_validator("layer_sizes")
    @classmethod
    def _sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) < 2 or any(s < 1 or s > 65_536 for s in value):
            raise ValueError("layer_sizes needs >= 2 positive sizes")
        return value


class RoundStopRequested(Message):
    """An operator cancels a round: it fails at the step it reached, and the compensations of
    the steps done run in reverse order, as for any failure."""

    kind: Literal["round.stop_requested"] = "round.stop_requested"
    round_id: RoundId
    reason: str = Field(default="", max_length=200)
