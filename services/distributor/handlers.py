"""Step 2, the distributor: sends each active cohort device the global model for an iteration.

Payloads are int8, zstd-compressed deltas against what the device holds (full model when it
holds nothing we know). Compensation tells every cohort device to delete the round's weights.
"""

from __future__ import annotations

from federated.model import init_mlp
from schemas import topics
from schemas.device import RevokeCommand
from schemas.events import IterationCompleted, NodesSelected, WeightsDistributed
from schemas.ops import RoundRequested
from schemas.steps import Step
from services.runtime import (
    Context,
    Rejected,
    Service,
    StaleRound,
    compensation,
    keys,
    metrics,
    on,
)
from services.runtime.state import Field, base_field
from services.runtime.weights import device_bases, rng_for, send_weights


async def _starting_model(request: RoundRequested, ctx: Context) -> tuple[str, str | None]:
    """Digest and version of the model the round starts from, creating one if none exists."""
    ver = request.model_version or await ctx.store.active_version(request.model_name)
    if ver is not None:
        record = await ctx.store.get_version(request.model_name, ver)
        if not record:
            raise Rejected(f"model {request.model_name} has no version {ver}")
        return record["digest"], ver
    params = init_mlp(request.layer_sizes, rng_for(request.model_name, request.seed, "init"))
    return await ctx.store.put_params(params, persist=True), None


async def on_nodes_selected(event: NodesSelected, ctx: Context) -> None:
    """Iteration 0: resolve the starting model and send it to the cohort."""
    state = await ctx.store.get_round(event.round_id)
    if not state.running:
        raise StaleRound(f"round {event.round_id} is {state.status}")
    if state.start_digest is None:
        try:
            start_digest, parent = await _starting_model(event.request, ctx)
        except Rejected as exc:
            await ctx.fail(event.round_id, Step.DISTRIBUTE, exc.reason)
            return
        # First writer wins: a repeated NodesSelected can never reset a running round.
        for field, value in (
            (Field.PARENT_VERSION, parent or ""),
            (Field.START_DIGEST, start_digest),
            (Field.GLOBAL_DIGEST, start_digest),
        ):
            await ctx.store.set_once(event.round_id, field, value)
    await distribute(event.round_id, 0, ctx)


async def on_iteration_completed(event: IterationCompleted, ctx: Context) -> None:
    """Iteration i finished: send the new global model for iteration i + 1."""
    await distribute(event.round_id, event.iteration + 1, ctx)


async def distribute(round_id: str, iteration: int, ctx: Context) -> None:
    """Send the round's current global model to every active device (idempotent)."""
    if await ctx.republish(round_id, f"distributed_{iteration}", WeightsDistributed) is not None:
        return
    state = await ctx.store.get_round(round_id)
    if not state.running or state.global_digest is None:
        raise StaleRound(f"round {round_id} is {state.status}")
    # Pin the model this iteration starts from; the aggregator adds the mean delta to it.
    global_digest = await ctx.store.set_once(round_id, base_field(iteration), state.global_digest)
    target = await ctx.store.get_params(global_digest)
    if target is None:
        await ctx.fail(round_id, Step.DISTRIBUTE, f"global model {global_digest} is missing")
        return
    active = await ctx.store.smembers(keys.active(round_id))
    if iteration == 0:
        bases = await device_bases(ctx, active)
    else:
        held = await ctx.store.hgetall(keys.held(round_id))
        bases = {d: held.get(d) for d in active}
    sent = await send_weights(
        ctx, round_id=round_id, target=target, bases=bases, purpose="train", iteration=iteration
    )
    await ctx.store.hset(keys.held(round_id), {d: dg for d, (dg, _) in sent.items()})
    sizes = {d: n for d, (_, n) in sent.items()}
    await ctx.store.record_traffic(round_id, iteration, "down", sizes)
    metrics.payloads("downlink", "train", list(sizes.values()))
    total = sum(sizes.values())
    await ctx.store.incr(round_id, Field.BYTES_DOWN, total)
    await ctx.store.incr(round_id, Field.PAYLOADS_DOWN, len(sent))
    await ctx.store.set_fields(round_id, {Field.STEP: Step.TRAIN, Field.ITERATION: iteration})
    await ctx.emit_once(
        f"distributed_{iteration}",
        WeightsDistributed(
            round_id=round_id,
            iteration=iteration,
            global_digest=global_digest,
            recipients=sorted(sent),
            bytes_sent=total,
        ),
    )
    metrics.step_done(Step.DISTRIBUTE)


async def revoke(round_id: str, ctx: Context) -> str:
    """Compensation: every cohort device deletes the weights it got for this round."""
    metrics.compensated(Step.DISTRIBUTE)
    cohort = await ctx.store.smembers(keys.cohort(round_id))
    await ctx.publish_all(
        (topics.device(topics.DEVICE_CMD, d) for d in cohort),
        RevokeCommand(round_id=round_id, reason="round failed"),
    )
    return f"revoked weights on {len(cohort)} devices"


service = Service(
    name="distributor",
    routes=[
        on(on_nodes_selected),
        on(on_iteration_completed),
        *compensation(Step.DISTRIBUTE, revoke),
    ],
)
