"""Step 6, the deployer: canary rollout to 10% -> 50% -> 100% of the fleet, with a health gate.

Each stage sends the new version (a delta against what each device runs) and a deploy command
to the stage's new devices, which keep their previous version and report health on their own
data. A stage passes when at most `MAX_UNHEALTHY` of its devices report a regression beyond
the tolerance, failed, or stayed silent past the stage timeout; the last stage makes the version
active. A redelivered event starts no stage twice. Compensation rolls the devices back.

A report costs one script in Redis: it records the device's verdict and counts it in its
stage's counters, and the stage is read in full and judged only once the counters say it could
be decided (its last pending device reported), or at its timeout. Other reports (training
progress, on the same topic) cost no Redis call at all: the route is idempotent, so the
runtime does not dedupe them either.

What it decides is in `decisions.py`, free of I/O; these handlers read, call it and write.
"""

from __future__ import annotations

import json

from schemas import topics
from schemas.base import now_ms
from schemas.device import DeployCommand, DeviceReport, RollbackCommand
from schemas.events import CanaryStagePassed, ModelDeployed, ModelValidated, RoundCompleted
from schemas.steps import Step
from services.deployer.decisions import (
    StageTally,
    device_verdict,
    rollout_order,
    stage_devices,
    stage_outcomes,
    stage_timeout_ms,
    stage_verdict,
    tally,
    worth_judging,
)
from services.runtime import Context, Service, compensation, metrics, on
from services.runtime.state import Field, stage_deadline_field, stage_started_field
from services.runtime.weights import device_bases, send_weights

ROLLOUT_RETRY_MS = 1_000
# A safety net only: the lock is released when the rollout ends either way.
ROLLOUT_LOCK_MS = 3_600_000


async def on_model_validated(event: ModelValidated, ctx: Context) -> None:
    """The candidate passed validation: roll it out once no other rollout of the model runs."""
    await begin_rollout(event.round_id, ctx)


async def begin_rollout(round_id: str, ctx: Context) -> None:
    """Take the model's rollout lock, fix the fleet order and start the first stage.

    Rollouts of one model run one at a time: a device judges a canary against the version
    it runs, so two rollouts at once would judge each other's models. A round that finds
    another rollout under way waits for it (a timer tries again).
    """
    state = await ctx.store.get_round(round_id)
    if not state.running:
        return
    holder = await ctx.store.acquire_rollout(state.model_name, round_id, ROLLOUT_LOCK_MS)
    if holder != round_id:
        ctx.log.info("rollout waits for another", behind=holder)
        await ctx.schedule(round_id, "rollout", now_ms() + ROLLOUT_RETRY_MS)
        return
    if state.deploy_fleet is None:
        since = now_ms() - ctx.settings.device_fresh_ms
        devices = await ctx.store.devices(seen_since_ms=since)
        fleet = rollout_order(devices, state.request.seed)
        if not fleet:
            await ctx.fail(round_id, Step.DEPLOY, "no online device to deploy to")
            return
        await ctx.store.set_once(round_id, Field.DEPLOY_FLEET, json.dumps(fleet))
    await start_stage(round_id, 1, ctx)


async def start_stage(round_id: str, stage: int, ctx: Context) -> None:
    """Deploy to the devices that stage `stage` adds (idempotent: a replay resends the same)."""
    state = await ctx.store.get_round(round_id)
    if state.stage(stage).started or not state.running:
        return
    fleet = state.deploy_fleet or []
    new = stage_devices(fleet, ctx.settings.canary_stages, stage)
    version, digest = state.candidate_version or "", state.candidate_digest or ""
    target = await ctx.store.get_params(digest) if digest else None
    if target is None:
        await ctx.fail(round_id, Step.DEPLOY, f"candidate {digest} is missing")
        return
    await ctx.store.arm_stage(round_id, stage, new)  # a replay overwrites no verdict
    await ctx.store.set_fields(round_id, {Field.DEPLOY_STAGE: stage})
    s = ctx.settings
    timeout = stage_timeout_ms(s.canary_timeout_ms, s.canary_ms_per_device, len(new))
    deadline = int(
        await ctx.store.set_once(round_id, stage_deadline_field(stage), now_ms() + timeout)
    )
    await ctx.schedule(round_id, f"stage:{stage}", deadline)
    chaos = state.request.simulate_failure
    sent = await send_weights(
        ctx,
        round_id=round_id,
        target=target,
        bases=await device_bases(ctx, new),
        purpose="deploy",
        version=version,
    )
    await ctx.store.incr(round_id, Field.BYTES_DEPLOY, sum(n for _, n in sent.values()))
    metrics.payloads("downlink", "deploy", [n for _, n in sent.values()])
    for device_id, (rebuilt, _) in sent.items():
        await ctx.publish(
            topics.device(topics.DEVICE_CMD, device_id),
            DeployCommand(
                round_id=round_id,
                version=version,
                digest=rebuilt,
                stage=ctx.settings.canary_stages[stage - 1],
                chaos=chaos,
            ),
        )
    ctx.log.info("canary stage started", stage=stage, devices=len(new), fleet=len(fleet))
    await ctx.store.mark_once(round_id, stage_started_field(stage))
    await check_stage(round_id, stage, ctx)


async def on_report(report: DeviceReport, ctx: Context) -> None:
    """A canary device reports the deployed version's health (or that it failed)."""
    ctx.check_device(report.device_id)
    verdict = device_verdict(report.status, report.metrics, ctx.settings.canary_tolerance)
    if verdict is None:
        return  # training progress or the like: no Redis call at all
    counted = await ctx.store.judge_device(report.round_id, report.device_id, verdict)
    if counted is None:
        return  # not a device of this rollout
    # Judged before or not (this may be a replay after a crash), the counters say whether
    # the stage could be decided now; judging it is idempotent, and a stage they leave
    # undecided is judged at its timeout.
    counters = StageTally(
        pending=counted.pending, ok=counted.ok, bad=counted.bad, failed=counted.failed
    )
    if worth_judging(counters):
        await check_stage(report.round_id, counted.stage, ctx)


async def on_timer(round_id: str, tag: str, ctx: Context) -> None:
    """A stage timed out (judge it on what was reported), or a rollout may start now."""
    if tag == "rollout":
        await begin_rollout(round_id, ctx)
        return
    await check_stage(round_id, int(tag.split(":")[1]), ctx, timed_out=True)


async def check_stage(round_id: str, stage: int, ctx: Context, *, timed_out: bool = False) -> None:
    """Pass or fail a stage once every device reported (or it timed out).

    A pass is recorded once; a replay re-announces it and carries on (the next stage and
    `finish` are idempotent). A stage whose judgement is already recorded is not judged again.
    """
    passed = await ctx.republish(round_id, f"stage_passed_{stage}", CanaryStagePassed)
    state = await ctx.store.get_round(round_id)
    if passed is None:
        if not state.running:
            return
        pct = ctx.settings.canary_stages[stage - 1]
        verdict = stage_verdict(
            tally(stage_outcomes(await ctx.store.deployment(round_id), stage)),
            stage=stage,
            percent=pct,
            timed_out=timed_out,
        )
        if not verdict.decided:
            return
        if verdict.reason is not None:
            await ctx.fail(round_id, Step.DEPLOY, verdict.reason)
            await ctx.store.cancel(ctx.service, round_id, f"stage:{stage}")
            return
        await ctx.emit_once(
            f"stage_passed_{stage}",
            CanaryStagePassed(
                round_id=round_id,
                version=state.candidate_version or "",
                stage=stage,
                percent=pct,
                devices=verdict.devices,
                healthy=verdict.healthy,
            ),
        )
    # Only once the judgement is recorded: until then the timer is what re-judges the stage.
    await ctx.store.cancel(ctx.service, round_id, f"stage:{stage}")
    if stage < len(ctx.settings.canary_stages):
        await start_stage(round_id, stage + 1, ctx)
        return
    await finish(round_id, ctx)


async def finish(round_id: str, ctx: Context) -> None:
    """Every stage passed: the version becomes active and the round succeeds."""
    if await ctx.republish(round_id, "deployed", ModelDeployed) is not None:
        # Done before: re-announce only. Re-activating here could roll the fleet back to
        # this version after a later round deployed a newer one.
        await ctx.republish(round_id, "completed", RoundCompleted)
        await ctx.store.release_rollout((await ctx.store.get_round(round_id)).model_name, round_id)
        return
    state = await ctx.store.get_round(round_id)
    model, version = state.model_name, state.candidate_version or ""
    await ctx.store.transition(
        round_id,
        {Field.STATUS: "running"},
        {Field.STATUS: "succeeded", Field.DEPLOYED_VERSION: version},
    )
    state = await ctx.store.get_round(round_id)
    if state.status != "succeeded" or state.deployed_version != version:
        return
    # Each write below is idempotent, so a replay after a crash finishes the job.
    await ctx.store.set_active_version(model, version)
    await ctx.store.update_version(model, version, status="deployed")
    devices = await ctx.store.deployed_count(round_id)
    await ctx.emit_once(
        "deployed",
        ModelDeployed(
            round_id=round_id,
            version=version,
            stages=list(ctx.settings.canary_stages),
            devices=devices,
        ),
    )
    metrics.step_done(Step.DEPLOY)
    await ctx.emit_once(
        "completed", RoundCompleted(round_id=round_id, outcome="succeeded", version=version)
    )
    await ctx.store.release_rollout(model, round_id)


async def rollback(round_id: str, ctx: Context) -> str:
    """Compensation: every device that got the version returns to its previous one."""
    metrics.compensated(Step.DEPLOY)
    state = await ctx.store.get_round(round_id)
    version = state.candidate_version or ""
    deployed = await ctx.store.deployment(round_id)
    for device_id in deployed:
        await ctx.publish(
            topics.device(topics.DEVICE_CMD, device_id),
            RollbackCommand(round_id=round_id, version=version),
        )
    if version:
        await ctx.store.update_version(state.model_name, version, status="rolled_back")
    await ctx.store.release_rollout(state.model_name, round_id)
    return f"rolled back {version or 'nothing'} on {len(deployed)} devices"


service = Service(
    name="deployer",
    timers=on_timer,
    routes=[
        on(on_model_validated),
        # A repeated report changes nothing by itself (`judge_device` keeps the first verdict,
        # and judging a stage is idempotent), so the runtime's dedupe is not needed for it.
        on(on_report, idempotent=True),
        *compensation(Step.DEPLOY, rollback),
    ],
)
