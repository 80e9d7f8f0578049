"""What the deployer decides, as functions of plain values.

- **Rollout order**: the online devices, sorted by id, then shuffled with the round's seed; the
  order is fixed once per round so a replay deploys to the same devices.
- **Stages** are cumulative percentages of that order (10, 50, 100 by default): stage k adds the
  devices between the end of stage k-1 and `stage_sizes(...)[k-1]`. Every stage of a non-empty
  fleet has at least one device, so a tiny fleet may give a stage nothing new to add.
- A device's **canary verdict** comes from its report: `failed` when it could not deploy, `bad`
  when its accuracy on its own data fell more than the tolerance below its previous version's,
  `ok` otherwise. Until it reports, it is `pending`; its first verdict stands (a repeated or
  late report changes nothing).
- A **stage's verdict** waits while a device is pending, unless the stage timed out (then the
  pending ones count as unhealthy). It fails when more than `MAX_UNHEALTHY` of its devices are
  not `ok`; otherwise it passes, and a stage that added no device passes. It is judged on a
  `StageTally`, the stage's devices counted by standing.
- Counters of each stage's devices by standing are kept with every report, so a report costs
  O(1): the stage is judged on them, and read in full only when they say it **is worth it**
  (it could be decided now), not once per report.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from schemas.device import DeviceStatus

MAX_UNHEALTHY = 0.2
PENDING = "pending"
OK = "ok"
BAD = "bad"
FAILED = "failed"

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


def stage_outcomes(deployment: Mapping[str, str], stage: int) -> list[str]:
    """The verdicts (or pending) of the devices a stage added, from the rollout's standings
    (device -> `{standing}:{stage}`, as the store records them)."""
    return [s.split(":")[0] for s in deployment.values() if s.endswith(f":{stage}")]


@dataclass(frozen=True)
class StageTally:
    """A stage's devices counted by standing: awaiting a verdict, or judged."""

    pending: int = 0
    ok: int = 0
    bad: int = 0
    failed: int = 0

    @property
    def devices(self) -> int:
        """How many devices the stage added."""
        return self.pending + self.ok + self.bad + self.failed

    @property
    def kept(self) -> bool:
        """Could these be real counts? A stage armed before its counters were kept counts
        its reports down from nothing, below zero."""
        return min(self.pending, self.ok, self.bad, self.failed) >= 0


def tally(outcomes: Iterable[str]) -> StageTally:
    """Count a stage's outcomes (verdicts or pending) by standing."""
    counts = Counter(outcomes)
    return StageTally(
        pending=counts[PENDING], ok=counts[OK], bad=counts[BAD], failed=counts[FAILED]
    )


def decidable(counts: StageTally, *, timed_out: bool) -> bool:
    """Can a stage be judged: no device of it is pending, or it timed out?"""
    return timed_out or counts.pending == 0


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


def stage_verdict(counts: StageTally, *, stage: int, percent: int, timed_out: bool) -> StageVerdict:
    """Judge a stage from its devices counted by standing."""
    devices, healthy = counts.devices, counts.ok
    unhealthy = devices - healthy
    if not decidable(counts, timed_out=timed_out):
        return StageVerdict(decided=False, devices=devices, healthy=healthy)
    # A stage may add no device on a tiny fleet (10% and 50% of 1); it passes.
    if devices and unhealthy / devices > MAX_UNHEALTHY:
        causes = [
            name
            for name, n in ((BAD, counts.bad), (FAILED, counts.failed), (PENDING, counts.pending))
            if n
        ]
        reason = (
            f"canary stage {stage} ({percent}%): {unhealthy}/{devices} devices "
            f"unhealthy ({', '.join(causes)})"
        )
        return StageVerdict(decided=True, devices=devices, healthy=healthy, reason=reason)
    return StageVerdict(decided=True, devices=devices, healthy=healthy)


def worth_judging(counters: StageTally) -> bool:
    """After a report: could its stage be decided now, by the counters kept with each report?
    Then the stage is read in full and judged (what the full read finds stands); otherwise it
    waits for more reports or its timeout, without a read. Counters that cannot be real (a
    stage armed before they were kept) always say yes: the full read is then the judge."""
    return not counters.kept or decidable(counters, timed_out=False)
