"""Step 4, the aggregator: FedAvg weighted by example count, computed as updates stream in.

Each accepted update is folded into a running sum kept in Redis (memory O(model), independent
of the cohort), atomically and once per device. When the coordinator closes an iteration, the
mean delta moves the global model; after `training_rounds` iterations it is the candidate.
Compensation discards the aggregate.

What it decides is in `decisions.py`, free of I/O; these handlers read, call it and write.
"""

from __future__ import annotations

from federated.errors import NumericsError, PayloadError
from federated.params import add, check_finite, flatten, spec_of, unflatten
from federated.payload import PayloadLimits, read_payload
from schemas import topics
from schemas.device import DeviceUpdate
from schemas.events import (
    IterationCompleted,
    ModelAggregated,
    TrainingCompleted,
    UpdateReceived,
)
from schemas.steps import Step
from services.aggregator.decisions import Refusal, check_payload, check_update, fedavg_weight
from services.runtime import Context, Rejected, Service, StaleRound, compensation, keys, on
from services.runtime.state import Field

_RETRIES = 50


async def on_update(update: DeviceUpdate, ctx: Context) -> None:
    """Validate a device's update and fold it into the iteration's running FedAvg."""
    ctx.check_device(update.device_id)
    round_id, it = update.round_id, update.iteration
    state = await ctx.store.get_round(round_id)
    held = await ctx.store.hget(keys.held(round_id), update.device_id)
    registered = await ctx.store.device(update.device_id)
    _refuse(
        check_update(
            update,
            round_status=state.status,
            selected=await ctx.store.sismember(keys.cohort(round_id), update.device_id),
            current_iteration=state.iteration if state.exists else None,
            closing=state.at(it).closing,
            held_digest=held,
            registered_examples=None if registered is None else registered.num_examples,
        )
    )
    base = state.at(it).base
    global_params = None if base is None else await ctx.store.get_params(base)
    if global_params is None:
        raise Rejected("global model missing")
    try:
        payload = read_payload(update.blob, limits=PayloadLimits(max_bytes=len(update.blob)))
    except PayloadError as exc:
        raise Rejected(f"bad update payload: {exc.reason}") from exc
    _refuse(
        check_payload(
            base_digest=update.base_digest,
            payload_base_digest=payload.base_digest,
            payload_spec=spec_of(payload.delta),
            model_spec=spec_of(global_params),
        )
    )
    weight = fedavg_weight(update.num_examples, state.example_cap)
    try:
        added = await ctx.store.fold_update(
            round_id, it, update.device_id, flatten(payload.delta), weight
        )
    except NumericsError as exc:
        raise Rejected(f"update rejected: {exc}") from exc
    received = UpdateReceived(
        round_id=round_id,
        iteration=it,
        device_id=update.device_id,
        num_examples=update.num_examples,
    )
    if not added:
        # Already in the sum; announce it again in case the first announcement was lost
        # (the coordinator's compare-and-set makes a repeat harmless).
        await ctx.publish(topics.round_event(round_id, UpdateReceived.topic_name), received)
        return
    await ctx.store.incr(round_id, Field.BYTES_UP, len(update.blob))
    await ctx.store.incr(round_id, Field.PAYLOADS_UP, 1)
    await ctx.emit(received)


def _refuse(refusal: Refusal | None) -> None:
    """Raise what the runtime expects for a refused update."""
    if refusal is not None:
        raise (StaleRound if refusal.stale else Rejected)(refusal.reason)


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
    acc = await ctx.store.aggregate(round_id, it)
    contributors = await ctx.store.contributors(round_id, it)
    base = state.at(it).base
    current = None if base is None else await ctx.store.get_params(base)
    if acc is None or current is None or not set(event.participants) <= contributors:
        await ctx.fail(round_id, Step.AGGREGATE, f"iteration {it}: aggregate or base missing")
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
            ),
        )
    else:
        await ctx.store.set_fields(
            round_id, {Field.STEP: Step.VALIDATE, Field.CANDIDATE_DIGEST: new_digest}
        )
        await ctx.emit_once(
            f"aggregated_{it}",
            ModelAggregated(round_id=round_id, iterations=it + 1, digest=new_digest),
        )


async def discard(round_id: str, ctx: Context) -> str:
    """Compensation: drop the running sums and the candidate model."""
    state = await ctx.store.get_round(round_id)
    dropped = await ctx.store.discard_aggregates(round_id, state.iteration + 1)
    candidate = state.candidate_digest
    if candidate and candidate != state.start_digest:
        await ctx.store.drop_params(candidate)
    await ctx.store.set_fields(round_id, {Field.CANDIDATE_DIGEST: ""})
    return f"discarded aggregate ({dropped} keys, candidate {candidate or 'none'})"


service = Service(
    name="aggregator",
    routes=[
        on(on_update),
        on(on_training_completed),
        *compensation(Step.AGGREGATE, discard),
    ],
)
