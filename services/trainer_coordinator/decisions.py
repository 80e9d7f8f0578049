"""What the trainer coordinator decides, as functions of plain values.

Each device of an iteration is in one state: `training` (it was told to train), `done` (the
aggregator accepted its update) or `failed:<reason>` (it reported a `FailureReason`, or one was
inferred: `deadline_passed`, `went_offline`). A state moves once, out of `training`.

- An iteration is **settled** when no device is still training. A device whose update is in the
  aggregate (a contributor) counts as done even if the coordinator has not heard so yet.
- It **closes** once settled, or when its deadline passes: whoever is still training then has
  failed with `deadline_passed`. Counters of devices training and done (kept with each move)
  say when a full check **is worth it**, so a settled device costs O(1), not a read of the
  whole iteration.
- It **meets quorum** when at least `min_participating_nodes` devices and at least half the
  cohort (rounded up) are done. Then the aggregator applies the iteration; otherwise the round
  fails at step 3 with a reason that counts the failures by cause.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from schemas.device import FailureReason

TRAINING = "training"
DONE = "done"
FAILED = "failed:"


def failed_state(reason: str) -> str:
    """The state of a device that failed the iteration for `reason`."""
    return f"{FAILED}{reason}"


def failure_note(reason: str, iteration: int) -> str:
    """How a round's failure record reads, per device (the status view counts the reason)."""
    return f"{reason} (iteration {iteration})"


def settled(states: Mapping[str, str], contributors: Collection[str]) -> bool:
    """Is no device still training (a contributor being as good as done)?"""
    return all(s != TRAINING or d in contributors for d, s in states.items())


def worth_checking(training: int, undelivered: int) -> bool:
    """After a device settled: could the iteration be settled now? Yes when none is training,
    or when no more are training than have contributed without being marked done (their
    UpdateReceived may be in flight, or lost with a broker restart), so a full check could
    find every one of them a contributor. Otherwise not, without reading the iteration."""
    return training <= max(undelivered, 0)


def should_close(
    states: Mapping[str, str], contributors: Collection[str], *, deadline_passed: bool
) -> bool:
    """Close the iteration now: it is settled, or its deadline passed."""
    return deadline_passed or settled(states, contributors)


def fence(states: Mapping[str, str], contributors: Collection[str]) -> dict[str, str]:
    """Closing: the new state of each device still training (done if it contributed)."""
    return {
        d: DONE if d in contributors else failed_state(FailureReason.DEADLINE_PASSED)
        for d, s in states.items()
        if s == TRAINING
    }


def quorum_size(min_nodes: int, cohort: int) -> int:
    """How many devices must be done: the round's minimum, and at least half the cohort."""
    return max(min_nodes, math.ceil(cohort / 2))


@dataclass(frozen=True)
class Quorum:
    """An iteration's outcome: who is done, who failed and why, and whether that is enough."""

    done: list[str]
    failures: dict[str, str]
    need: int
    reason: str | None  # None when quorum was met; else why the round fails

    @property
    def met(self) -> bool:
        """Did enough devices finish?"""
        return self.reason is None


def quorum(states: Mapping[str, str], *, iteration: int, cohort: int, min_nodes: int) -> Quorum:
    """Judge a closed iteration from its final device states."""
    done = sorted(d for d, s in states.items() if s == DONE)
    failures = {d: s.removeprefix(FAILED) for d, s in states.items() if s != DONE}
    need = quorum_size(min_nodes, cohort)
    if len(done) >= need:
        return Quorum(done, failures, need, None)
    reasons = ", ".join(f"{r}: {n}" for r, n in Counter(failures.values()).items())
    reason = (
        f"insufficient participation in iteration {iteration}: {len(done)}/{cohort} devices "
        f"reported, need {need} ({reasons})"
    )
    return Quorum(done, failures, need, reason)


def still_offline(round_status: str | None, device_state: str | None) -> bool:
    """After its grace period, has a device that went offline failed the running round?"""
    return round_status == "running" and device_state in (None, "offline")
