"""What a device decides, as functions of plain values and a generator passed in.

When told to train an iteration, a device:

1. **pauses** when it is not charging and its battery is below `pause_below`: it says it is
   paused and reports `low_battery` (and draws nothing from its generator);
2. otherwise **fails** at its configured rates: one draw, the rates of `FailureRates` stacked
   in field order. When the round asks for the participation chaos and the device honours
   chaos (a simulated one does), it then fails with probability `chaos_share`, with a reason
   drawn from `CHAOS_REASONS`;
3. otherwise **trains**. It may still fail with `model_unavailable` when its weights do not
   arrive by the deadline, or `bad_payload` when they do not decode.

Training drains `drain_per_iteration` of battery unless the device is charging. Under the
validation chaos a device sends a corrupted update; under the deployment chaos it reports half
the accuracy it measured: the regression a canary must catch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_client.config import DeviceProfile
from schemas.device import FailureReason
from schemas.ops import Chaos

CHAOS_REASONS = (
    FailureReason.BATTERY_DIED,
    FailureReason.NETWORK_TIMEOUT,
    FailureReason.DEVICE_SUSPENDED,
)


@dataclass(frozen=True)
class TrainingDecision:
    """Train, pause (low battery) or fail, with the reason the device reports."""

    action: Literal["train", "pause", "fail"]
    reason: FailureReason | None = None


TRAIN = TrainingDecision("train")
PAUSE = TrainingDecision("pause", FailureReason.LOW_BATTERY)


def training_decision(
    profile: DeviceProfile, battery: float, chaos: Chaos, rng: np.random.Generator
) -> TrainingDecision:
    """What a device told to train does: pause, act out a failure, or train."""
    if not profile.charging and battery < profile.pause_below:
        return PAUSE
    draw = rng.random()
    for reason, rate in profile.failures.model_dump().items():
        if draw < rate:
            return TrainingDecision("fail", FailureReason(reason))
        draw -= rate
    if profile.honor_chaos and chaos == Chaos.PARTICIPATION and rng.random() < profile.chaos_share:
        return TrainingDecision("fail", FailureReason(str(rng.choice(CHAOS_REASONS))))
    return TRAIN


def corrupts_update(profile: DeviceProfile, chaos: Chaos) -> bool:
    """Does the device send a corrupted update (the validation chaos)?"""
    return profile.honor_chaos and chaos == Chaos.VALIDATION


def battery_after_training(profile: DeviceProfile, battery: float) -> float:
    """The battery left after one iteration of training."""
    if profile.charging:
        return battery
    return max(0.0, battery - profile.drain_per_iteration)


def reported_accuracy(profile: DeviceProfile, chaos: Chaos, accuracy: float) -> float:
    """The accuracy a canary device reports for a deployed version."""
    if profile.honor_chaos and chaos == Chaos.DEPLOYMENT:
        return accuracy * 0.5
    return accuracy
