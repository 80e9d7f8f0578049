"""What the selector decides, as functions of plain values.

- A device is **eligible** to train when it is online (idle or training), on a network, has at
  least `MIN_BATTERY` charge or is charging, has `MIN_MEMORY_MB` of memory and some examples.
- Eligible devices are **ranked** plugged-in first, then on Wi-Fi, then by fuller battery; ties
  are broken by a shuffle seeded with the round's seed, so a round picks the same cohort when
  it is replayed. The selector leases them in that order until it has `cohort_size`.
- A round for a **model** with no version yet starts a new lineage only when the request says
  so (`create_model`); a named `model_version` must exist.
- A cohort smaller than `min_participating_nodes` **fails the round** at step 1, saying how
  many eligible devices other rounds hold.
- An operator's **stop** fails a running round at the last step that may have done work (the
  aggregator anywhere in the training loop), and the steps done compensate in reverse order.
- A round's **time budget** is every iteration's timeout plus every canary stage's timeout plus
  `ROUND_MARGIN_MS`; a round still running after it fails at the step it is stuck in. Leases
  last `LEASE_MARGIN_MS` longer than the budget, so they outlive the round's own deadline.
- At that deadline a round still **compensating** is nudged instead: its recorded failure and
  compensations are announced again (a service that missed one acts on it; one that saw it
  drops the repeat), every `COMPENSATION_NUDGE_MS` until the round has failed cleanly.
- FedAvg weighs an update by the examples its device reports, at most the round's **example
  cap**: `factor` times the cohort's median registered count. A device that claims 10^9
  examples weighs as much as a few typical ones, not the whole cohort.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from schemas.device import DeviceStatus
from schemas.ops import RoundRequested
from schemas.steps import Step

MIN_BATTERY = 0.2
MIN_MEMORY_MB = 64
LEASE_MARGIN_MS = 120_000
ROUND_MARGIN_MS = 60_000
COMPENSATION_NUDGE_MS = 15_000


def eligible(status: DeviceStatus) -> bool:
    """Can this device train now? Online, on a network, enough battery or charging, memory."""
    return (
        status.state in ("idle", "training")
        and status.network != "none"
        and (status.charging or status.battery >= MIN_BATTERY)
        and status.memory_mb >= MIN_MEMORY_MB
        and status.num_examples > 0
    )


def rank(statuses: list[DeviceStatus], seed: int) -> list[DeviceStatus]:
    """Plugged-in first, then Wi-Fi, then fuller batteries; ties broken by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(statuses))
    shuffled = [statuses[i] for i in order]
    return sorted(shuffled, key=lambda s: (not s.charging, s.network != "wifi", -s.battery))


def round_budget_ms(
    request: RoundRequested,
    canary_stages: tuple[int, ...],
    canary_timeout_ms: int,
    *,
    canary_ms_per_device: int = 0,
    fleet: int = 0,
) -> int:
    """How long a round may take before it is failed: every iteration and every canary stage
    (each a base timeout plus a little per device; the stages together reach the fleet)."""
    stages = len(canary_stages) * canary_timeout_ms + canary_ms_per_device * fleet
    return request.training_rounds * request.iteration_timeout_ms + stages + ROUND_MARGIN_MS


def lease_ms(budget_ms: int) -> int:
    """How long a device stays leased to a round with this budget."""
    return budget_ms + LEASE_MARGIN_MS


def model_refusal(
    request: RoundRequested, versions: Sequence[str], version_known: bool
) -> str | None:
    """Why the round's model (and start version) cannot be trained, or None when it can."""
    name = request.model_name
    if request.model_version is not None and not version_known:
        return f"model {name} has no version {request.model_version}"
    if not versions and not request.create_model:
        return f"model {name} does not exist; set create_model to start a new lineage"
    return None


def cohort_shortfall(
    cohort: int, registered: int, min_nodes: int, held: Mapping[str, int] | None = None
) -> str | None:
    """Why a cohort of this size cannot start the round, or None when it can.

    `held` counts eligible devices leased to other rounds, by round id.
    """
    if cohort >= min_nodes:
        return None
    reason = f"only {cohort} eligible devices of {registered} registered; need {min_nodes}"
    if held:
        busy = ", ".join(f"{n} to round {r}" for r, n in sorted(held.items()))
        reason += f" (eligible devices leased: {busy})"
    return reason


def stop_step(status: str, step: int) -> int | str:
    """The step at which an operator's stop fails the round, or why it cannot be stopped.

    In the training loop (steps 2-4) it is always the aggregator's: a partial sum or an
    earlier iteration's model may exist whichever of the three the round is at, and each of
    those compensations does nothing when it has nothing to undo.
    """
    if status != "running":
        return f"round is {status}, not running"
    if Step.DISTRIBUTE <= step <= Step.AGGREGATE:
        return int(Step.AGGREGATE)
    return step


def deadline_action(status: str | None) -> Literal["fail", "nudge"] | None:
    """What the round deadline does to a round in `status`."""
    if status == "running":
        return "fail"
    if status == "compensating":
        return "nudge"
    return None


def example_cap(registered: Sequence[int], factor: float) -> int:
    """The most examples one update may weigh in FedAvg: `factor` x the median (at least 1)."""
    if not registered:
        return 1
    return max(1, math.ceil(factor * float(np.median(registered))))
