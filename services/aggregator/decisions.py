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
Each refusal also carries a short `code` from a fixed list (`REFUSAL_CODES`), the label that
`fedsaga_updates_rejected_total` counts it under: its reason names devices and rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from federated.params import ParamSpec
from schemas.device import DeviceUpdate

# Why updates are refused, as metric labels: the checks below, then the handler's own.
REFUSAL_CODES = (
    "round_not_running",
    "not_selected",
    "iteration_not_open",
    "wrong_base",
    "too_many_examples",
    "payload_base_mismatch",
    "shape_mismatch",
    "device_mismatch",  # the update's device id is not its topic's
    "model_missing",  # the iteration's base model is gone
    "bad_payload",  # the payload does not decode
    "not_numeric",  # non-finite values, or a weight FedAvg cannot use
    "iteration_closed",  # fenced while the update was being checked
)


@dataclass(frozen=True)
class Refusal:
    """Why an update is not aggregated; `code` is the reason's label (equal reasons, equal
    codes, so refusals compare by reason)."""

    reason: str
    stale: bool = False  # the round or the iteration has moved on
    code: str = field(default="", compare=False)


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
        return Refusal(f"round {round_id} is {round_status}", stale=True, code="round_not_running")
    if not selected:
        return Refusal(
            f"device {update.device_id} was not selected for round {round_id}",
            code="not_selected",
        )
    if current_iteration is None or iteration != current_iteration or closing:
        return Refusal(
            f"iteration {iteration} is not open (current {current_iteration})",
            stale=True,
            code="iteration_not_open",
        )
    if held_digest != update.base_digest:
        return Refusal("update is not against the model this device was sent", code="wrong_base")
    if registered_examples is not None and update.num_examples > registered_examples:
        return Refusal(
            f"num_examples {update.num_examples} exceeds the {registered_examples} "
            "the device registered",
            code="too_many_examples",
        )
    return None


def check_payload(
    *,
    base_digest: str | None,
    payload_base_digest: str | None,
    payload_spec: ParamSpec,
    model_spec: ParamSpec,
) -> Refusal | None:
    """The checks a decoded payload passes; None when it passes them."""
    if payload_base_digest != base_digest:
        return Refusal(
            "payload base digest differs from the update's", code="payload_base_mismatch"
        )
    if payload_spec != model_spec:
        return Refusal("update shapes do not match the model", code="shape_mismatch")
    return None


def fedavg_weight(num_examples: int, cap: str | int | None) -> int:
    """An update's FedAvg weight: its examples, at most the round's example cap (if set).

    The cap (set at selection from the cohort's registered counts) keeps one device's claim
    from dominating the average; the check above already bounds the claim by what the
    device registered.
    """
    return num_examples if cap is None else min(num_examples, int(cap))


def close_plan(contributors: set[str], in_memory: set[str]) -> tuple[bool, list[str]]:
    """How to sum an iteration at its close: (whether this instance's in-memory sum can be
    used, the devices whose buffered updates must be read and added).

    The in-memory sum covers `in_memory`; Redis says who contributed. What is in memory but
    not among the contributors cannot happen (a device enters the sum only after Redis took
    its update), short of the iteration being discarded and begun again; the sum is then
    not trusted, and every update is read from the buffer.
    """
    if not in_memory <= contributors:
        return False, sorted(contributors)
    return True, sorted(contributors - in_memory)
