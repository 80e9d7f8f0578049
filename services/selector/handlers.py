"""Step 1, the selector: keeps the device registry, picks an eligible cohort and leases it.

Compensation releases the leases; after it, the round is over and the selector says so.

What it decides is in `decisions.py`, free of I/O; these handlers read, call it and write.
"""

from __future__ import annotations

from collections import Counter

from schemas import topics
from schemas.base import now_ms
from schemas.device import DeviceStatus
from schemas.events import NodesSelected, RoundCompleted, RoundFailed, StepCompensated
from schemas.ops import RoundRequested, RoundStopRequested
from schemas.steps import Step
from services.runtime import Context, Rejected, Service, compensation, keys, metrics, on
from services.runtime.state import Field
from services.selector.decisions import (
    COMPENSATION_NUDGE_MS,
    cohort_shortfall,
    deadline_action,
    eligible,
    example_cap,
    lease_ms,
    model_refusal,
    rank,
    round_budget_ms,
    stop_step,
)


async def on_status(status: DeviceStatus, ctx: Context) -> None:
    """Record a device's status in the registry (retained, so every device is known)."""
    ctx.check_device(status.device_id)
    await ctx.store.put_device(status)


async def on_round_requested(request: RoundRequested, ctx: Context) -> None:
    """Create the round, then select, lease and announce its cohort."""
    round_id = request.round_id
    created = await ctx.store.create_round(request)
    state = await ctx.store.get_round(round_id)
    if not created and state.request_id != request.msg_id:
        raise Rejected(f"round {round_id} already exists")
    if await ctx.republish(round_id, "selected", NodesSelected) is not None:
        return  # a replay after the cohort was announced
    if not state.running:
        return  # a replay after the round already failed here
    versions = await ctx.store.versions(request.model_name)
    version = request.model_version
    version_known = bool(version) and bool(
        await ctx.store.get_version(request.model_name, version or "")
    )
    refusal = model_refusal(request, versions, version_known)
    if refusal is not None:
        await ctx.fail(round_id, Step.SELECT, refusal)
        return
    await select(request, ctx)


async def on_stop_requested(stop: RoundStopRequested, ctx: Context) -> None:
    """An operator's cancel: fail the round where it is; the compensations follow."""
    state = await ctx.store.get_round(stop.round_id)
    if not state.exists:
        raise Rejected(f"no round {stop.round_id}")
    step = stop_step(state.status, state.step)
    if isinstance(step, str):
        raise Rejected(f"round {stop.round_id} cannot be stopped: {step}")
    reason = "stopped by the operator" + (f": {stop.reason}" if stop.reason else "")
    # Only if the round is still at the step we judged (else retried against the new one).
    await ctx.fail(stop.round_id, step, reason, seen={Field.STEP: str(int(state.step))})


async def select(request: RoundRequested, ctx: Context) -> None:
    """Lease the best-ranked eligible devices, fail short of the minimum, else announce them."""
    s = ctx.settings
    round_id = request.round_id
    now = now_ms()
    await ctx.store.forget_devices(now - s.key_ttl_s * 1000)
    registry = await ctx.store.devices(seen_since_ms=now - s.device_fresh_ms)
    budget_ms = round_budget_ms(
        request,
        s.canary_stages,
        s.canary_timeout_ms,
        canary_ms_per_device=s.canary_ms_per_device,
        fleet=len(registry),  # the rollout reaches every device heard from
    )
    candidates = rank([d for d in registry if eligible(d)], request.seed)
    cohort = await lease_cohort(request, candidates, lease_ms(budget_ms), ctx)
    held: Counter[str] = Counter()
    if len(cohort) < request.min_participating_nodes:  # say who holds the rest
        for status in candidates:
            owner = await ctx.store.lease_owner(status.device_id)
            if owner is not None and owner != round_id:
                held[owner] += 1
    shortfall = cohort_shortfall(
        len(cohort), len(registry), request.min_participating_nodes, held
    )
    if shortfall is not None:
        await ctx.fail(round_id, Step.SELECT, shortfall)
        return
    await ctx.schedule(round_id, "deadline", now_ms() + budget_ms)
    examples = {d.device_id: d.num_examples for d in registry}
    cap = example_cap([examples.get(d, 0) for d in cohort], s.example_cap_factor)
    await ctx.store.set_fields(
        round_id,
        {Field.COHORT_SIZE: len(cohort), Field.EXAMPLE_CAP: cap, Field.STEP: Step.DISTRIBUTE},
    )
    selected = NodesSelected(
        round_id=round_id, request=request, cohort=sorted(cohort), eligible=len(candidates)
    )
    await ctx.emit_once("selected", selected)
    metrics.step_done(Step.SELECT)


async def lease_cohort(
    request: RoundRequested, candidates: list[DeviceStatus], ttl_ms: int, ctx: Context
) -> list[str]:
    """Lease candidates in order until the cohort is full; a replay keeps what it leased."""
    round_id = request.round_id
    cohort = await ctx.store.smembers(keys.cohort(round_id))
    for status in candidates:
        if len(cohort) >= request.cohort_size:
            break
        device_id = status.device_id
        if device_id not in cohort and await ctx.store.lease(device_id, round_id, ttl_ms):
            cohort.append(device_id)
            await ctx.store.sadd(keys.cohort(round_id), device_id)
    await ctx.store.sadd(keys.active(round_id), *cohort)
    return cohort


async def on_timer(round_id: str, tag: str, ctx: Context) -> None:
    """The round's deadline: fail a round still running; nudge one stuck compensating."""
    state = await ctx.store.get_round(round_id)
    action = deadline_action(state.status)
    if action == "fail":
        await ctx.fail(round_id, state.step, "round deadline passed")
    elif action == "nudge":
        await ctx.republish(round_id, "failed", RoundFailed)
        for step in Step:
            await ctx.republish(round_id, f"compensated_{step}", StepCompensated)
        await ctx.schedule(round_id, "deadline", now_ms() + COMPENSATION_NUDGE_MS)


async def release_all(round_id: str, ctx: Context) -> str:
    """Release every lease this round holds (compensation of step 1, and round end)."""
    released = 0
    for device_id in await ctx.store.smembers(keys.cohort(round_id)):
        released += await ctx.store.release(device_id, round_id)
    return f"released {released} leases"


async def compensate(round_id: str, ctx: Context) -> str:
    """Compensation of step 1: release the round's leases."""
    metrics.compensated(Step.SELECT)
    return await release_all(round_id, ctx)


async def on_round_completed(event: RoundCompleted, ctx: Context) -> None:
    """A finished round gives its devices back (and is counted, by outcome)."""
    await release_all(event.round_id, ctx)
    metrics.ROUNDS.labels(outcome=event.outcome).inc()
    created = await ctx.store.hget(keys.round_hash(event.round_id), Field.CREATED_MS)
    if created is not None:
        seconds = max(event.ts_ms - int(created), 0) / 1000
        metrics.ROUND_SECONDS.labels(outcome=event.outcome).observe(seconds)
    state = await ctx.store.get_round(event.round_id)
    if event.outcome == "failed" and state.failed_step is not None:
        metrics.step_failed(state.failed_step)


async def on_compensated(event: StepCompensated, ctx: Context) -> None:
    """The last compensation ran: the round has failed cleanly."""
    await ctx.store.transition(
        event.round_id, {Field.STATUS: "compensating"}, {Field.STATUS: "failed"}
    )
    state = await ctx.store.get_round(event.round_id)
    if state.status == "failed":
        await ctx.emit_once(
            "completed",
            RoundCompleted(
                round_id=event.round_id,
                outcome="failed",
                version=state.parent_version,
                reason=state.failure_reason,
            ),
        )


service = Service(
    name="selector",
    timers=on_timer,
    routes=[
        on(on_round_requested),
        on(on_stop_requested),
        on(on_status),
        on(on_round_completed),
        on(on_compensated, topics.compensated_filter(Step.SELECT)),  # the chain's last link
        *compensation(Step.SELECT, compensate),
    ],
)
