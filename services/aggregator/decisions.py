"""What the aggregator decides about a device's update, as functions of plain values.

An update is folded into its iteration's FedAvg only if every check passes, in this order:

1. its round is running, and 2. its device was selected for the round;
3. its iteration is the round's current one and is not closing (the coordinator fenced it);
4. it is against the model this device was sent (`base_digest`), and
5. it claims no more examples than the device registered;

then, once the payload is decoded (checks 1-5 come first, so nothing is decoded for a device
that had no business sending it):

6. the payload names the same base as the update, and 7. its tensors have the model's shapes.

A failed check is a `Refusal`: `stale` ones concern a round or iteration that moved on; the
others are input the aggregator refuses. Either way nothing is added and the reason is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from federated.params import ParamSpec
from schemas.device import DeviceUpdate


@dataclass(frozen=True)
class Refusal:
    """Why an update is not aggregated."""

    reason: str
    stale: bool = False  # the round or the iteration has moved on


def check_update(
    update: DeviceUpdate,
    *,
    round_status: str,
    selected: bool,
    current_iteration: int | None,
    closing: bool,
    held_digest: str | None,
    registered_examples: int | None,
) -> Refusal | None:
    """The checks an update passes before its payload is decoded; None when it passes them.

    Args:
        round_status: the round's status ("unknown" when there is no such round).
        selected: whether the device is in the round's cohort.
        current_iteration: the round's iteration, None when it has none.
        closing: whether the coordinator has fenced the update's iteration.
        held_digest: the digest of the model the device was sent, None if it was sent none.
        registered_examples: the example count the device registered, None if unregistered.
    """
    round_id, iteration = update.round_id, update.iteration
    if round_status != "running":
        return Refusal(f"round {round_id} is {round_status}", stale=True)
    if not selected:
        return Refusal(f"device {update.device_id} was not selected for round {round_id}")
    if current_iteration is None or iteration != current_iteration or closing:
        return Refusal(
            f"iteration {iteration} is not open (current {current_iteration})", stale=True
        )
    if held_digest != update.base_digest:
        return Refusal("update is not against the model this device was sent")
    if registered_examples is not None and update.num_examples > registered_examples:
        return Refusal(
            f"num_examples {update.num_examples} exceeds the {registered_examples} "
            "the device registered"
        )
    return None


def check_payload(
    *,
    base_digest: str,
    payload_base_digest: str | None,
    payload_spec: ParamSpec,
    model_spec: ParamSpec,
) -> Refusal | None:
    """The checks a decoded payload passes; None when it passes them."""
    if payload_base_digest != base_digest:
        return Refusal("payload base digest differs from the update's")
    if payload_spec != model_spec:
        return Refusal("update shapes do not match the model")
    return None


def fedavg_weight(num_examples: int, cap: str | int | None) -> int:
    """An update's FedAvg weight: its examples, at most the round's example cap (if set).

    The cap (set at selection from the cohort's registered counts) keeps one device's claim
    from dominating the average; the check above already bounds the claim by what the
    device registered.
    """
    return num_examples if cap is None else min(num_examples, int(cap))
