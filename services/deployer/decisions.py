"""What the deployer decides, as functions of plain values.

- **Rollout order**: the online devices, sorted by id, then shuffled with the round's seed; the
  order is fixed once per round so a replay deploys to the same devices.
- **Stages** are cumulative percentages of that order (10, 50, 100 by default): stage k adds the
  devices between the end of stage k-1 and `stage_sizes(...)[k-1]`. Every stage of a non-empty
  fleet has at least one device, so a tiny fleet may give a stage nothing new to add.
- A device's **canary verdict** comes from its report: `failed` when it could not deploy, `bad`
  when its accuracy on its own data fell more than the tolerance below its previous version's,
  `ok` otherwise. Until it reports, it is `pending`.
- A **stage's verdict** waits while a device is pending, unless the stage timed out (then the
  pending ones count as unhealthy). It fails when more than `MAX_UNHEALTHY` of its devices are
  not `ok`; otherwise it passes, and a stage that added no device passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from schemas.device import DeviceStatus

MAX_UNHEALTHY = 0.2
PENDING = "pending"
OK = "ok"

DeviceVerdict = Literal["ok", "bad", "failed"]


def rollout_order(statuses: Iterable[DeviceStatus], seed: int) -> list[str]:
    """The online devices in the order this round deploys to them (empty if none is online)."""
    online = sorted(s.device_id for s in statuses if s.state != "offline")
    return [online[i] for i in np.random.default_rng(seed).permutation(len(online))]


def stage_sizes(fleet: int, percents: tuple[int, ...]) -> list[int]:
    """Cumulative device counts per stage (at least one device in the first stage)."""
    return [max(1, math.ceil(fleet * p / 100)) if fleet else 0 for p in percents]


def stage_timeout_ms(base_ms: int, per_device_ms: int, devices: int) -> int:
    """How long a canary stage waits for its devices' health reports: a base, plus a little
    per device it deploys to."""
    return base_ms + per_device_ms * devices


def stage_devices(fleet: Sequence[str], percents: tuple[int, ...], stage: int) -> list[str]:
    """The devices that stage `stage` (1-based) adds to those of the stages before it."""
    sizes = stage_sizes(len(fleet), percents)
    return list(fleet[(sizes[stage - 2] if stage > 1 else 0) : sizes[stage - 1]])


def device_verdict(
    status: str, metrics: Mapping[str, float], tolerance: float
) -> DeviceVerdict | None:
    """A canary device's health from its report; None for a report that is not about health."""
    if status == "deploy_failed":
        return "failed"
    if status != "deployed":
        return None
    acc = metrics.get("accuracy", 0.0)
    prev = metrics.get("previous_accuracy", 0.0)
    return "ok" if acc >= prev - tolerance else "bad"


def deployment_state(verdict: str, stage: int) -> str:
    """How a device's standing in a rollout is recorded: its verdict (or pending) and stage."""
    return f"{verdict}:{stage}"


def pending_stage(state: str) -> int | None:
    """The stage a device awaits a verdict in, or None once it has one (or was never sent)."""
    verdict, _, stage = state.partition(":")
    return int(stage) if verdict == PENDING else None


def judged_stage(state: str) -> int | None:
    """The stage a device was judged in, or None while pending (or never sent)."""
    verdict, _, stage = state.partition(":")
    return int(stage) if stage and verdict != PENDING else None


def stage_outcomes(deployment: Mapping[str, str], stage: int) -> list[str]:
    """The verdicts (or pending) of the devices a stage added."""
    return [s.split(":")[0] for s in deployment.values() if s.endswith(f":{stage}")]


@dataclass(frozen=True)
class StageVerdict:
    """A stage's judgement: wait for reports, pass, or fail with a reason."""

    decided: bool  # False: devices are still pending and the stage has time left
    devices: int
    healthy: int
    reason: str | None = None  # why the stage failed; None when it passed (or is undecided)

    @property
    def passed(self) -> bool:
        """Did the stage pass?"""
        return self.decided and self.reason is None


def stage_verdict(
    outcomes: Sequence[str], *, stage: int, percent: int, timed_out: bool
) -> StageVerdict:
    """Judge a stage from its devices' verdicts."""
    unhealthy = sum(s != OK for s in outcomes)
    healthy = len(outcomes) - unhealthy
    if PENDING in outcomes and not timed_out:
        return StageVerdict(decided=False, devices=len(outcomes), healthy=healthy)
    # A stage may add no device on a tiny fleet (10% and 50% of 1); it passes.
    if outcomes and unhealthy / len(outcomes) > MAX_UNHEALTHY:
        reason = (
            f"canary stage {stage} ({percent}%): {unhealthy}/{len(outcomes)} devices "
            f"unhealthy ({', '.join(sorted(set(outcomes) - {OK}))})"
        )
        return StageVerdict(decided=True, devices=len(outcomes), healthy=healthy, reason=reason)
    return StageVerdict(decided=True, devices=len(outcomes), healthy=healthy)
