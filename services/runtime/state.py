"""A round's saga state: the one model of what its Redis hash holds, and every field's name.

The hash is written by six services, each owning a few fields; every name is spelled here once
(`Field`, and the per-iteration and per-stage templates below), and `RoundState.from_hash`
reads the whole hash into typed values. Handlers read a `RoundState` from the store and write
through the store's typed methods (`set_fields`, `set_once`, `mark_once`, `incr`,
`transition`), naming fields with these constants; they never spell a field as text.

Who writes what:
- status, step, iteration: each step as the saga moves; failed_step, failure_reason: whoever
  fails the round (`Context.fail`).
- request, request_id, model_name, cohort_size, example_cap: the selector.
- parent_version, start_digest, global_digest, base_{i}: the distributor (global_digest also
  the aggregator); deadline_{i}, training_{i}, closing_{i}: the trainer coordinator.
- candidate_digest: the aggregator; metrics, candidate_version, validation_failure: the
  validator.
- deploy_fleet, deploy_stage, stage_deadline_{s}, started_{s}, deployed_version: the deployer;
  stage_{standing}_{s}: its counters of stage s's devices by standing (pending, ok, bad,
  failed), kept by the deployment store's scripts with each device's standing.
- bytes_*, payloads_*: traffic counters; out:{key}: recorded outcomes (`Context.emit_once`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, cast

from schemas.ops import RoundRequested
from schemas.steps import Step

RoundStatus = Literal["unknown", "running", "compensating", "failed", "succeeded"]
_STATUSES = ("running", "compensating", "failed", "succeeded")


class Field(StrEnum):
    """A field of the round hash that is not per iteration or per stage."""

    STATUS = "status"
    STEP = "step"
    ITERATION = "iteration"
    CREATED_MS = "created_ms"
    UPDATED_MS = "updated_ms"
    REQUEST = "request"
    REQUEST_ID = "request_id"
    MODEL_NAME = "model_name"
    FAILED_STEP = "failed_step"
    FAILURE_REASON = "failure_reason"
    COHORT_SIZE = "cohort_size"
    EXAMPLE_CAP = "example_cap"
    PARENT_VERSION = "parent_version"
    START_DIGEST = "start_digest"
    GLOBAL_DIGEST = "global_digest"
    CANDIDATE_DIGEST = "candidate_digest"
    CANDIDATE_VERSION = "candidate_version"
    METRICS = "metrics"
    VALIDATION_FAILURE = "validation_failure"
    DEPLOY_FLEET = "deploy_fleet"
    DEPLOY_STAGE = "deploy_stage"
    DEPLOYED_VERSION = "deployed_version"
    BYTES_UP = "bytes_up"
    BYTES_DOWN = "bytes_down"
    BYTES_DEPLOY = "bytes_deploy"
    PAYLOADS_UP = "payloads_up"
    PAYLOADS_DOWN = "payloads_down"


class PerIteration(StrEnum):
    """Fields the round hash holds once per iteration i, as `{name}_{i}`."""

    BASE = "base"  # the digest iteration i starts from (pinned once)
    DEADLINE = "deadline"  # when it closes whatever happened (ms, fixed once)
    TRAINING = "training"  # set once its train commands are out
    CLOSING = "closing"  # set once it is fenced: the aggregator takes no more updates


class PerStage(StrEnum):
    """Fields the round hash holds once per canary stage s, as `{name}_{s}`."""

    DEADLINE = "stage_deadline"  # when the stage is judged on what was reported (ms)
    STARTED = "started"  # set once its deploy commands are out
    # How many of the stage's devices stand so (kept with each standing, `deployments.py`)
    PENDING = "stage_pending"
    OK = "stage_ok"
    BAD = "stage_bad"
    FAILED = "stage_failed"


# A canary device's standing -> the per-stage field that counts devices standing so.
STAGE_COUNTERS = {
    "pending": PerStage.PENDING,
    "ok": PerStage.OK,
    "bad": PerStage.BAD,
    "failed": PerStage.FAILED,
}


def base_field(it: int) -> str:
    """The digest iteration `it` starts from."""
    return f"{PerIteration.BASE}_{it}"


def deadline_field(it: int) -> str:
    """When iteration `it` closes."""
    return f"{PerIteration.DEADLINE}_{it}"


def training_field(it: int) -> str:
    """Set once iteration `it`'s train commands are out."""
    return f"{PerIteration.TRAINING}_{it}"


def closing_field(it: int) -> str:
    """Set once iteration `it` is fenced."""
    return f"{PerIteration.CLOSING}_{it}"


def stage_deadline_field(stage: int) -> str:
    """When canary stage `stage` is judged."""
    return f"{PerStage.DEADLINE}_{stage}"


def stage_started_field(stage: int) -> str:
    """Set once canary stage `stage`'s deploy commands are out."""
    return f"{PerStage.STARTED}_{stage}"


def stage_counter_field(standing: str, stage: int) -> str:
    """How many of canary stage `stage`'s devices stand `standing` (pending, ok, bad, failed)."""
    return f"{STAGE_COUNTERS[standing]}_{stage}"


_OUT = "out:"


def outcome_field(key: str) -> str:
    """Where the round's recorded outcome `key` (an event, as JSON) lives."""
    return f"{_OUT}{key}"


@dataclass(frozen=True)
class IterationState:
    """What the round hash says about one training iteration."""

    base: str | None = None
    deadline_ms: int | None = None
    training: bool = False
    closing: bool = False


@dataclass(frozen=True)
class StageState:
    """What the round hash says about one canary stage."""

    deadline_ms: int | None = None
    started: bool = False


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _text(value: str | None) -> str | None:
    return value or None


@dataclass(frozen=True)
class RoundState:
    """A round as its hash has it; `status == "unknown"` when there is no such round."""

    round_id: str
    status: RoundStatus = "unknown"
    step: Step = Step.SELECT
    iteration: int = 0
    model_name: str = ""
    request_json: str = ""
    request_id: str = ""
    failed_step: int | None = None
    failure_reason: str | None = None
    cohort_size: int = 0
    example_cap: int | None = None
    parent_version: str | None = None
    start_digest: str | None = None
    global_digest: str | None = None
    candidate_digest: str | None = None
    candidate_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    validation_failure: str | None = None
    deploy_fleet: list[str] | None = None
    deployed_version: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    iterations: dict[int, IterationState] = field(default_factory=dict)
    stages: dict[int, StageState] = field(default_factory=dict)
    outcomes: frozenset[str] = frozenset()

    @property
    def exists(self) -> bool:
        """Whether the round is known at all."""
        return self.status != "unknown"

    @property
    def running(self) -> bool:
        """Whether the round is under way (neither failing nor over)."""
        return self.status == "running"

    @property
    def failing(self) -> bool:
        """Whether the round failed (its compensations may still be running)."""
        return self.status in ("compensating", "failed")

    @property
    def request(self) -> RoundRequested:
        """The request the selector accepted."""
        return RoundRequested.model_validate_json(self.request_json)

    def at(self, it: int) -> IterationState:
        """Iteration `it`'s state (empty when it has not started)."""
        return self.iterations.get(it, IterationState())

    def stage(self, stage: int) -> StageState:
        """Canary stage `stage`'s state (empty when it has not started)."""
        return self.stages.get(stage, StageState())

    def counter(self, name: Field) -> int:
        """A traffic counter (0 until counted)."""
        return self.counters.get(name, 0)

    @classmethod
    def from_hash(cls, round_id: str, h: Mapping[str, str]) -> RoundState:
        """Read a round hash; an empty hash is an unknown round."""
        if not h:
            return cls(round_id)
        its: dict[int, dict[str, object]] = {}
        stages: dict[int, dict[str, object]] = {}
        for name, value in h.items():
            prefix, _, n = name.rpartition("_")
            if not n.isdigit():
                continue
            i = int(n)
            if prefix == PerIteration.BASE:
                its.setdefault(i, {})["base"] = value
            elif prefix == PerIteration.DEADLINE:
                its.setdefault(i, {})["deadline_ms"] = int(value)
            elif prefix == PerIteration.TRAINING:
                its.setdefault(i, {})["training"] = True
            elif prefix == PerIteration.CLOSING:
                its.setdefault(i, {})["closing"] = True
            elif prefix == PerStage.DEADLINE:
                stages.setdefault(i, {})["deadline_ms"] = int(value)
            elif prefix == PerStage.STARTED:
                stages.setdefault(i, {})["started"] = True
        status = h.get(Field.STATUS, "unknown")
        fleet = h.get(Field.DEPLOY_FLEET)
        counter_fields = (
            Field.BYTES_UP,
            Field.BYTES_DOWN,
            Field.BYTES_DEPLOY,
            Field.PAYLOADS_UP,
            Field.PAYLOADS_DOWN,
        )
        return cls(
            round_id=round_id,
            status=cast(RoundStatus, status if status in _STATUSES else "unknown"),
            step=Step(int(h.get(Field.STEP, Step.SELECT))),
            iteration=int(h.get(Field.ITERATION, 0)),
            model_name=h.get(Field.MODEL_NAME, ""),
            request_json=h.get(Field.REQUEST, ""),
            request_id=h.get(Field.REQUEST_ID, ""),
            failed_step=_int(h.get(Field.FAILED_STEP)),
            failure_reason=h.get(Field.FAILURE_REASON),
            cohort_size=int(h.get(Field.COHORT_SIZE, 0)),
            example_cap=_int(h.get(Field.EXAMPLE_CAP)),
            parent_version=_text(h.get(Field.PARENT_VERSION)),
            start_digest=_text(h.get(Field.START_DIGEST)),
            global_digest=_text(h.get(Field.GLOBAL_DIGEST)),
            candidate_digest=_text(h.get(Field.CANDIDATE_DIGEST)),
            candidate_version=_text(h.get(Field.CANDIDATE_VERSION)),
            metrics=json.loads(h.get(Field.METRICS, "{}")),
            validation_failure=_text(h.get(Field.VALIDATION_FAILURE)),
            deploy_fleet=json.loads(fleet) if fleet else None,
            deployed_version=_text(h.get(Field.DEPLOYED_VERSION)),
            counters={f.value: int(h[f]) for f in counter_fields if f in h},
            iterations={i: IterationState(**v) for i, v in its.items()},  # type: ignore[arg-type]
            stages={i: StageState(**v) for i, v in stages.items()},  # type: ignore[arg-type]
            outcomes=frozenset(n.removeprefix(_OUT) for n in h if n.startswith(_OUT)),
        )
