"""Step 4, the aggregator: FedAvg weighted by example count, computed as updates stream in.

Each accepted update is made durable in Redis first, as the payload the device sent, once per
device and never after the coordinator fenced the iteration (`AggregateStore.buffer_update`),
then folded into a running sum in this process's memory (`sums.py`; O(model), independent of
the cohort). When the coordinator closes an iteration, the sum is completed from the buffer
with whatever this instance did not fold itself (updates another instance took, or from
before a restart: `close_plan`), and the mean delta moves the global model; after
`training_rounds` iterations it is the candidate. A `kill -9` at any point loses nothing:
an update is either buffered (and summed at the close) or not acknowledged to the broker,
which delivers it again. Compensation discards the buffers and the candidate.

What it decides is in `decisions.py`, free of I/O; these handlers read, call it and write.
"""

from __future__ import annotations

import hashlib

from federated import aggregate
from federated.errors import NumericsError, PayloadError
from federated.params import Params, ParamSpec, add, check_finite, flatten, spec_of, unflatten
from federated.payload import PayloadLimits, read_payload
from schemas.base import now_ms
from schemas.device import DeviceUpdate
from schemas.events import (
    IterationCompleted,
    ModelAggregated,
    TrainingCompleted,
    UpdateReceived,
)
from schemas.steps import Step
from services.aggregator.decisions import (
    REFUSAL_CODES,
    Refusal,
    check_payload,
    check_update,
    close_plan,
    fedavg_weight,
)
from services.aggregator.sums import RunningSums
from services.runtime import Context, Rejected, Service, StaleRound, compensation, metrics, on
from services.runtime.state import Field, RoundState
from services.runtime.store.aggregates import SenderView

SUMS = RunningSums()  # this process's share of each open iteration's sum
_READ_CHUNK = 64  # buffered updates read per call at a close (memory: 64 payloads)


async def on_update(update: DeviceUpdate, ctx: Context) -> None:
    """Validate a device's update and fold it into the iteration's running FedAvg."""
    try:
        ctx.check_device(update.device_id)
    except Rejected as exc:
        raise refused(Refusal(exc.reason, code="device_mismatch")) from exc
    view = await ctx.store.sender_view(update.round_id, update.iteration, update.device_id)
    if view.taken == update.msg_id:
        # A retransmission of the update in the sum (the device did not hear back; a replay
        # after a crash): counted once, never refused, announced again in case the first
        # announcement was lost with the crash.
        ctx.log.info("update already aggregated")
        await announce(update, ctx)
        return
    state = check_sender(update, view)
    delta = await decoded_delta(update, state, ctx)
    weight = fedavg_weight(update.num_examples, state.example_cap)
    try:
        flat = aggregate.check_update(flatten(delta), weight)
        added = await ctx.store.buffer_update(
            update.round_id, update.iteration, update.device_id, weight, update.blob, update.msg_id
        )
    except NumericsError as exc:
        raise refused(Refusal(f"update rejected: {exc}", code="not_numeric")) from exc
    except StaleRound as exc:
        raise refused(Refusal(exc.reason, stale=True, code="iteration_closed")) from exc
    if added:
        SUMS.add(update.round_id, update.iteration, update.device_id, flat, weight)
        metrics.UPDATES_ACCEPTED.inc()
        metrics.payloads("uplink", "update", [len(update.blob)])
    else:
        ctx.log.info("update already aggregated")
    await announce(update, ctx)


async def announce(update: DeviceUpdate, ctx: Context) -> None:
    """Tell the coordinator the device's update is in. Its msg_id is per device and
    iteration, so however often this runs it is logged once, and dropped as a duplicate by
    whoever already has it."""
    await ctx.emit(
        UpdateReceived(
            msg_id=received_id(update.round_id, update.iteration, update.device_id),
            round_id=update.round_id,
            iteration=update.iteration,
            device_id=update.device_id,
            num_examples=update.num_examples,
        )
    )


def check_sender(update: DeviceUpdate, view: SenderView) -> RoundState:
    """Refuse an update its sender had no business sending (decisions.check_update)."""
    state = view.round
    refusal = check_update(
        update,
        round_status=state.status,
        selected=view.selected,
        current_iteration=state.iteration if state.exists else None,
        closing=state.at(update.iteration).closing,
        held_digest=view.held,
        registered_examples=None if view.registered is None else view.registered.num_examples,
    )
    _refuse(refusal)
    return state


async def decoded_delta(update: DeviceUpdate, state: RoundState, ctx: Context) -> Params:
    """The update's delta, decoded within its own size and checked against the model."""
    base = state.at(update.iteration).base
    global_params = None if base is None else await ctx.store.get_params(base)
    if global_params is None:
        raise refused(Refusal("global model missing", code="model_missing"))
    return checked_delta(update.blob, update.base_digest, spec_of(global_params))


def checked_delta(blob: bytes, base_digest: str | None, model_spec: ParamSpec) -> Params:
    """A payload's delta, decoded within its own size, checked against the model and, unless
    `base_digest` is None (checked when it was accepted), the base it must name."""
    try:
        payload = read_payload(blob, limits=PayloadLimits(max_bytes=len(blob)))
    except PayloadError as exc:
        raise refused(Refusal(f"bad update payload: {exc.reason}", code="bad_payload")) from exc
    _refuse(
        check_payload(
            base_digest=payload.base_digest if base_digest is None else base_digest,
            payload_base_digest=payload.base_digest,
            payload_spec=spec_of(payload.delta),
            model_spec=model_spec,
        )
    )
    return payload.delta


def received_id(round_id: str, it: int, device_id: str) -> str:
    """The msg_id of the UpdateReceived for a device's update in an iteration."""
    key = f"update.received|{round_id}|{it}|{device_id}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


def refused(refusal: Refusal) -> Rejected:
    """The error the runtime expects for a refused update, counted under its code."""
    metrics.UPDATES_REJECTED.labels(reason=metrics.bounded(refusal.code, REFUSAL_CODES)).inc()
    return (StaleRound if refusal.stale else Rejected)(refusal.reason)


def _refuse(refusal: Refusal | None) -> None:
    """Raise what the runtime expects for a refused update, if refused."""
    if refusal is not None:
        raise refused(refusal)


async def on_training_completed(event: TrainingCompleted, ctx: Context) -> None:
    """Apply the iteration's FedAvg to the global model; emit the next step's event."""
    round_id, it = event.round_id, event.iteration
    state = await ctx.store.get_round(round_id)
    if not state.exists:
        raise StaleRound(f"round {round_id} is unknown")
    final = it + 1 >= state.request.training_rounds
    announced = ModelAggregated if final else IterationCompleted
    if await ctx.republish(round_id, f"aggregated_{it}", announced) is not None:
        return
    if not state.running:
        return
    contributors = await ctx.store.contributors(round_id, it)
    base = state.at(it).base
    current = None if base is None else await ctx.store.get_params(base)
    if base is None or current is None or not contributors:
        await ctx.fail(round_id, Step.AGGREGATE, f"iteration {it}: no updates or no base")
        return
    if not set(event.participants) <= contributors:
        await ctx.fail(
            round_id, Step.AGGREGATE, f"iteration {it}: a participant's update is missing"
        )
        return
    try:
        acc = await iteration_sum(round_id, it, contributors, spec_of(current), ctx)
    except (Rejected, LookupError) as exc:
        await ctx.fail(round_id, Step.AGGREGATE, f"iteration {it}: {exc}")
        return
    # From the pinned base, so a replay computes the same model instead of stepping twice.
    new_global = add(current, unflatten(acc.mean(), spec_of(current)))
    try:
        check_finite(new_global)
    except NumericsError as exc:
        await ctx.fail(round_id, Step.AGGREGATE, f"iteration {it}: {exc}")
        return
    new_digest = await ctx.store.put_params(new_global)
    await ctx.store.set_fields(round_id, {Field.GLOBAL_DIGEST: new_digest})
    if not final:
        await ctx.store.set_fields(round_id, {Field.STEP: Step.DISTRIBUTE})
        await ctx.emit_once(
            f"aggregated_{it}",
            IterationCompleted(
                round_id=round_id,
                iteration=it,
                global_digest=new_digest,
                num_examples=int(acc.total_weight),
                updates=acc.count,
            ),
        )
    else:
        await ctx.store.set_fields(
            round_id, {Field.STEP: Step.VALIDATE, Field.CANDIDATE_DIGEST: new_digest}
        )
        await ctx.emit_once(
            f"aggregated_{it}",
            ModelAggregated(
                round_id=round_id,
                iterations=it + 1,
                digest=new_digest,
                num_examples=int(acc.total_weight),
                updates=acc.count,
            ),
        )
    # Recorded: a replay republishes the outcome and needs neither the sum nor the buffer.
    SUMS.drop(round_id, it)
    await ctx.store.drop_buffer(round_id, it)
    metrics.step_done(Step.AGGREGATE)
    deadline = state.at(it).deadline_ms
    if deadline is not None:  # the coordinator fixed it when the train commands went out
        started_ms = deadline - state.request.iteration_timeout_ms
        metrics.ITERATION_SECONDS.observe((now_ms() - started_ms) / 1000)


async def iteration_sum(
    round_id: str, it: int, contributors: set[str], spec: ParamSpec, ctx: Context
) -> aggregate.FedAvgAccumulator:
    """The iteration's whole sum: this instance's, plus the buffered updates it lacks.

    Reads the buffer in chunks, so memory stays one sum and a chunk of payloads whatever the
    cohort. LookupError if a contributor's update is not buffered.
    """
    partial = SUMS.get(round_id, it)
    usable, to_read = close_plan(contributors, partial.devices)
    acc = partial.acc if usable else aggregate.FedAvgAccumulator()
    for start in range(0, len(to_read), _READ_CHUNK):
        chunk = to_read[start : start + _READ_CHUNK]
        for device_id, record in (await ctx.store.buffered(round_id, it, chunk)).items():
            if record is None:
                raise LookupError(f"the update of {device_id} is not buffered")
            weight, blob = record
            acc.add(flatten(checked_delta(blob, None, spec)), weight)
    if usable and to_read:
        ctx.log.info("sum completed from the buffer", added=len(to_read), iteration=it)
    return acc


async def discard(round_id: str, ctx: Context) -> str:
    """Compensation: drop the running sums and the candidate model."""
    metrics.compensated(Step.AGGREGATE)
    state = await ctx.store.get_round(round_id)
    dropped = await ctx.store.discard_aggregates(round_id, state.iteration + 1)
    SUMS.drop(round_id)
    candidate = state.candidate_digest
    if candidate and candidate != state.start_digest:
        await ctx.store.drop_params(candidate)
    await ctx.store.set_fields(round_id, {Field.CANDIDATE_DIGEST: ""})
    return f"discarded aggregate ({dropped} keys, candidate {candidate or 'none'})"


service = Service(
    name="aggregator",
    routes=[
        on(on_update, idempotent=True),
        on(on_training_completed),
        *compensation(Step.AGGREGATE, discard),
    ],
)
