"""Step 3, the trainer coordinator: starts each iteration's training and decides quorum.

A device's state per iteration moves once from `training` to `done` (its update was accepted)
or `failed:<reason>` (reported by the device, or inferred: deadline passed, went offline).
When no device is still training, or at the deadline, the iteration closes: quorum is at least
`min_participating_nodes` and at least half the cohort. Compensation stops training.

What it decides is in `decisions.py`, free of I/O; these handlers read, call it and write.
"""

from __future__ import annotations

from collections import defaultdict

from schemas import topics
from schemas.base import now_ms
from schemas.device import (
    DeviceReport,
    DeviceStatus,
    FailureReason,
    StopCommand,
    TrainCommand,
)
from schemas.events import TrainingCompleted, UpdateReceived, WeightsDistributed
from schemas.steps import Step
from services.runtime import Context, Service, compensation, keys, metrics, on
from services.runtime.state import Field, closing_field, deadline_field, training_field
from services.trainer_coordinator.decisions import (
    DONE,
    TRAINING,
    Quorum,
    failed_state,
    failure_note,
    fence,
    quorum,
    should_close,
    still_offline,
    worth_checking,
)


async def on_weights_distributed(event: WeightsDistributed, ctx: Context) -> None:
    """Tell every recipient to train this iteration, and arm the deadline."""
    state = await ctx.store.get_round(event.round_id)
    if not state.running or state.at(event.iteration).training:
        return
    request = state.request
    held = await ctx.store.hgetall(keys.held(event.round_id))
    # The deadline is fixed once: a replay re-arms the same one, never a later one.
    deadline = int(
        await ctx.store.set_once(
            event.round_id,
            deadline_field(event.iteration),
            now_ms() + request.iteration_timeout_ms,
        )
    )
    await ctx.store.arm_iteration(event.round_id, event.iteration, list(event.recipients))
    await ctx.schedule(event.round_id, f"deadline:{event.iteration}", deadline)
    by_model: dict[str, list[str]] = defaultdict(list)
    for device_id in event.recipients:
        by_model[held[device_id]].append(device_id)
    for model_digest, devices in by_model.items():
        command = TrainCommand(
            round_id=event.round_id,
            iteration=event.iteration,
            model_digest=model_digest,
            epochs=request.local_epochs,
            batch_size=request.batch_size,
            learning_rate=request.learning_rate,
            deadline_ms=deadline,
            chaos=request.simulate_failure,
        )
        await ctx.publish_all((topics.device(topics.DEVICE_CMD, d) for d in devices), command)
    await ctx.store.mark_once(event.round_id, training_field(event.iteration))


async def on_update_received(event: UpdateReceived, ctx: Context) -> None:
    """The aggregator took this device's update: it is done for the iteration."""
    counts = await ctx.store.settle_device(
        event.round_id, event.iteration, event.device_id, DONE, done=True
    )
    if counts is not None and worth_checking(*counts):
        await close_if_settled(event.round_id, event.iteration, ctx)


async def on_report(report: DeviceReport, ctx: Context) -> None:
    """A device reported that it failed this iteration."""
    ctx.check_device(report.device_id)
    if report.status != "failed":
        return
    await _mark_failed(
        report.round_id,
        report.iteration,
        report.device_id,
        report.reason or FailureReason.UNKNOWN,
        ctx,
    )


async def on_status(status: DeviceStatus, ctx: Context) -> None:
    """A device that goes offline (its last will) mid-iteration has failed it, unless it is
    back within the grace period: a broker restart publishes every device's will, and the
    devices reconnect a moment later."""
    if status.state != "offline":
        return
    round_id = await ctx.store.lease_owner(status.device_id)
    if round_id is None:
        return
    if (await ctx.store.get_round(round_id)).running:
        grace = ctx.settings.offline_grace_ms
        await ctx.schedule(round_id, f"offline:{status.device_id}", now_ms() + grace)


async def _still_offline(round_id: str, device_id: str, ctx: Context) -> None:
    state = await ctx.store.get_round(round_id)
    status = await ctx.store.device(device_id)
    if still_offline(state.status, None if status is None else status.state):
        await _mark_failed(round_id, state.iteration, device_id, FailureReason.WENT_OFFLINE, ctx)


async def _mark_failed(
    round_id: str, iteration: int, device_id: str, reason: str, ctx: Context
) -> None:
    if await ctx.store.contributed(round_id, iteration, device_id):
        return  # its update is in the aggregate: it did its part, whatever happened after
    counts = await ctx.store.settle_device(
        round_id, iteration, device_id, failed_state(reason), done=False
    )
    if counts is not None:
        ctx.log.info("device failed", device_id=device_id, reason=reason, iteration=iteration)
        if worth_checking(*counts):
            await close_if_settled(round_id, iteration, ctx)


async def on_connect(ctx: Context) -> None:
    """After (re)connecting: re-arm open deadlines and settle what happened meanwhile."""
    for round_id in await ctx.store.rounds():
        state = await ctx.store.get_round(round_id)
        it = state.iteration
        deadline = state.at(it).deadline_ms
        if not state.running or not state.at(it).training or deadline is None:
            continue
        if f"closed_{it}" not in state.outcomes:
            await ctx.schedule(round_id, f"deadline:{it}", deadline)
        await close_if_settled(round_id, it, ctx)


async def on_timer(round_id: str, tag: str, ctx: Context) -> None:
    """A deadline passed (whoever is still training has failed), or an offline grace ended."""
    kind, _, arg = tag.partition(":")
    if kind == "offline":
        await _still_offline(round_id, arg, ctx)
    else:
        await close_if_settled(round_id, int(arg), ctx, deadline_passed=True)


async def close_if_settled(
    round_id: str, iteration: int, ctx: Context, *, deadline_passed: bool = False
) -> None:
    """Close the iteration once no device is training (or at the deadline); decide quorum.

    The decision is recorded once (`emit_once`), so a replay re-announces it. Before deciding,
    the iteration is fenced: the aggregator accepts no update after `closing_{it}` is set, and
    every device whose update is in the aggregate counts as done, whether or not its
    UpdateReceived reached us (mosquitto drops messages for sessions restored after a restart
    until their client reconnects, so the contributor set in Redis is the truth).
    """
    if await ctx.republish(round_id, f"closed_{iteration}", TrainingCompleted) is not None:
        return
    it_key = keys.iteration(round_id, iteration)
    states = await ctx.store.hgetall(it_key)
    contributed = await ctx.store.contributors(round_id, iteration)
    if not should_close(states, contributed, deadline_passed=deadline_passed):
        return
    await ctx.store.set_once(round_id, closing_field(iteration), now_ms())
    contributed = await ctx.store.contributors(round_id, iteration)
    for device_id, state in fence(await ctx.store.hgetall(it_key), contributed).items():
        await ctx.store.hcas(it_key, device_id, TRAINING, state)
    await ctx.store.cancel(ctx.service, round_id, f"deadline:{iteration}")
    request = await ctx.store.request_of(round_id)
    judged = quorum(
        await ctx.store.hgetall(it_key),
        iteration=iteration,
        cohort=len(await ctx.store.smembers(keys.cohort(round_id))),
        min_nodes=request.min_participating_nodes,
    )
    deadline = await ctx.store.hget(keys.round_hash(round_id), deadline_field(iteration))
    count_iteration(judged, deadline, request.iteration_timeout_ms)
    if judged.failures:
        noted = {d: failure_note(r, iteration) for d, r in judged.failures.items()}
        await ctx.store.hset(keys.failures(round_id), noted)
        await ctx.store.srem(keys.active(round_id), *judged.failures)
    if judged.reason is not None:
        await ctx.fail(round_id, Step.TRAIN, judged.reason)
        return
    await ctx.store.set_fields(round_id, {Field.STEP: Step.AGGREGATE})
    await ctx.emit_once(
        f"closed_{iteration}",
        TrainingCompleted(
            round_id=round_id,
            iteration=iteration,
            participants=judged.done,
            failures=judged.failures,
        ),
    )
    metrics.step_done(Step.TRAIN)


def count_iteration(judged: Quorum, deadline_ms: str | None, timeout_ms: int) -> None:
    """Count a closed iteration's devices by outcome, and how long its training took."""
    for _ in judged.done:
        metrics.device_outcome(DONE)
    for reason in judged.failures.values():
        metrics.device_outcome(reason)
    if deadline_ms is not None:  # fixed, `timeout_ms` ahead, when the train commands went out
        started_ms = int(deadline_ms) - timeout_ms
        metrics.TRAINING_SECONDS.observe((now_ms() - started_ms) / 1000)


async def stop_training(round_id: str, ctx: Context) -> str:
    """Compensation: devices still in the round stop training."""
    metrics.compensated(Step.TRAIN)
    active = await ctx.store.smembers(keys.active(round_id))
    state = await ctx.store.get_round(round_id)
    await ctx.store.cancel(ctx.service, round_id, f"deadline:{state.iteration}")
    await ctx.publish_all(
        (topics.device(topics.DEVICE_CMD, d) for d in active),
        StopCommand(round_id=round_id, reason="round failed"),
    )
    return f"stopped training on {len(active)} devices"


service = Service(
    name="trainer_coordinator",
    timers=on_timer,
    on_connect=on_connect,
    routes=[
        on(on_weights_distributed),
        on(on_update_received, idempotent=True),
        on(on_report, idempotent=True),
        on(on_status),
        *compensation(Step.TRAIN, stop_training),
    ],
)
