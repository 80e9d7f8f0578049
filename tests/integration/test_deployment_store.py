"""The deployment store's scripts on the real Redis: a canary report costs one round trip, and
the counters it keeps per stage always equal a full tally of the rollout, whatever the order of
reports, however often they repeat, and however many arrive at once."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from deploy.stack import LocalStack
from fedsaga.client import FedSaga
from schemas import topics
from schemas.device import DeviceReport
from schemas.ops import RoundRequested
from services.deployer.decisions import (
    PENDING,
    StageTally,
    stage_devices,
    stage_outcomes,
    tally,
    worth_judging,
)
from services.deployer.handlers import on_report, service
from services.runtime import Context, keys
from services.runtime.store import SagaStore, StageCounters

VERDICTS = ("ok", "bad", "failed")
PERCENTS = (10, 50, 100)


async def new_round(store: SagaStore) -> str:
    round_id = f"t-{uuid.uuid4().hex[:10]}"
    await store.create_round(RoundRequested(round_id=round_id))
    return round_id


def counted(c: StageCounters) -> StageTally:
    return StageTally(pending=c.pending, ok=c.ok, bad=c.bad, failed=c.failed)


async def full_tally(store: SagaStore, round_id: str, stage: int) -> StageTally:
    return tally(stage_outcomes(await store.deployment(round_id), stage))


@pytest.mark.parametrize("seed", range(6))
async def test_counters_kept_report_by_report_equal_a_full_tally(saga: FedSaga, seed: int) -> None:
    # Prepare: a rollout of three stages, each armed twice (a replay); reports in any order,
    # repeated, contradicting the first, and from devices outside the rollout
    rng = random.Random(seed)
    store = saga.store
    round_id = await new_round(store)
    fleet = [f"d{i}" for i in range(rng.randint(1, 40))]
    stages = {s: stage_devices(fleet, PERCENTS, s) for s in (1, 2, 3)}
    first: dict[str, str] = {}
    for stage, devices in stages.items():
        for _ in range(2):
            assert await store.arm_stage(round_id, stage, devices) == len(devices)
        reports = [(rng.choice([*devices, "stranger"]), rng.choice(VERDICTS)) for _ in range(60)]
        for device, verdict in reports:
            # Execute
            got = await store.judge_device(round_id, device, verdict)

            # Assert: strangers count nowhere; a device's first verdict stands, once
            if device == "stranger":
                assert got is None
                continue
            assert got is not None
            assert got.stage == stage
            assert got.judged == (device not in first)
            first.setdefault(device, verdict)
            assert counted(got) == await full_tally(store, round_id, stage)
        # ...and arming the stage again (a replay after every report) changes nothing
        before = await store.deployment(round_id)
        await store.arm_stage(round_id, stage, devices)
        assert await store.deployment(round_id) == before
    standings = await store.deployment(round_id)
    assert standings == {
        d: f"{first.get(d, PENDING)}:{s}" for s, devices in stages.items() for d in devices
    }
    assert await store.deployed_count(round_id) == len(fleet)


async def test_reports_arriving_at_once_are_each_counted_once(saga: FedSaga) -> None:
    # Prepare: a stage of 200 devices, every one reporting twice, all at the same time
    store = saga.store
    round_id = await new_round(store)
    devices = [f"d{i}" for i in range(200)]
    await store.arm_stage(round_id, 1, devices)
    reports = [(d, v) for d in devices for v in ("ok", "bad")]
    random.Random(0).shuffle(reports)

    lanes = asyncio.Semaphore(16)  # as many at once as the client's pool allows

    async def report(device: str, verdict: str) -> StageCounters | None:
        async with lanes:
            return await store.judge_device(round_id, device, verdict)

    # Execute
    got = await asyncio.gather(*(report(d, v) for d, v in reports))

    # Assert: 200 verdicts recorded; exactly one report found the stage could be decided
    judged = [c for c in got if c is not None and c.judged]
    assert len(judged) == len(devices)
    last = [c for c in judged if worth_judging(counted(c))]
    assert len(last) == 1
    assert last[0].pending == 0
    final = await full_tally(store, round_id, 1)
    assert final.pending == 0
    assert final.devices == len(devices)
    assert all(counted(c) == final for c in got if c is not None and c.pending == 0)


async def test_a_report_for_a_round_that_is_gone_writes_nothing(saga: FedSaga) -> None:
    # Prepare: the deployment outlived its round hash (a late report, days later)
    store = saga.store
    round_id = await new_round(store)
    await store.arm_stage(round_id, 1, ["d0", "d1"])
    await store.redis.delete(keys.round_hash(round_id))

    # Execute
    got = await store.judge_device(round_id, "d0", "ok")

    # Assert: no counters recreated without a TTL, no standing moved
    assert got is None
    assert not await store.redis.exists(keys.round_hash(round_id))
    assert (await store.deployment(round_id))["d0"] == f"{PENDING}:1"


async def calls_by(store: SagaStore, url: str, action: Callable[[], Awaitable[None]]) -> list[str]:
    """The commands `store` sent Redis while `action` ran (MONITOR; a script's own commands
    are not calls), between two markers the store sends on the same connection."""
    addr = (await store.redis.client_info())["addr"]
    watcher = aioredis.Redis.from_url(url)
    calls: list[str] = []
    try:
        async with watcher.monitor() as monitor:
            await store.redis.echo("calls-start")
            await action()
            await store.redis.echo("calls-end")
            started = False
            async with asyncio.timeout(10):
                while True:
                    cmd = await monitor.next_command()
                    mine = f"{cmd['client_address']}:{cmd['client_port']}" == addr
                    if not mine:
                        continue
                    if cmd["command"].endswith("calls-end"):
                        break
                    if started:
                        calls.append(cmd["command"].split(" ", 1)[0].upper())
                    started = started or cmd["command"].endswith("calls-start")
    finally:
        await watcher.aclose()
    return calls


async def test_a_report_costs_one_call_and_a_training_report_none(stack: LocalStack) -> None:
    # Prepare: the deployer's handler on a store of its own, a stage of three devices
    url = stack.settings.redis_url
    store = SagaStore.from_url(url)
    try:
        round_id = await new_round(store)
        await store.arm_stage(round_id, 1, ["d0", "d1", "d2"])
        await store.judge_device(round_id, "stranger", "ok")  # the script is loaded

        def report(device: str, status: str) -> Callable[[], Awaitable[None]]:
            ctx = Context(
                service="deployer",
                settings=stack.settings,
                store=store,
                topic=topics.device(topics.DEVICE_REPORT, device),
            )
            message = DeviceReport(
                round_id=round_id,
                device_id=device,
                status=status,  # type: ignore[arg-type]
                metrics={"accuracy": 0.9, "previous_accuracy": 0.9},
            )
            return lambda: on_report(message, ctx)

        # Execute
        training = await calls_by(store, url, report("d0", "training"))
        first = await calls_by(store, url, report("d0", "deployed"))
        again = await calls_by(store, url, report("d0", "deploy_failed"))
        second = await calls_by(store, url, report("d1", "deploy_failed"))

        # Assert: a training report costs the deployer nothing; a deploy report, new or
        # repeated, one script while its stage cannot be decided; and the runtime adds no
        # dedupe calls to either (a repeat changes nothing by itself)
        route = service.route(topics.device(topics.DEVICE_REPORT, "d0"))
        assert route is not None
        assert route.handler is on_report
        assert route.idempotent
        assert training == []
        assert first == again == second == ["EVALSHA"]
        standings = await store.deployment(round_id)
        assert standings == {"d0": "ok:1", "d1": "failed:1", "d2": "pending:1"}
    finally:
        await store.aclose()
