"""Faults the saga must absorb (issue 7), each on real processes: a deployer killed while canary
reports arrive, two rounds rolling out one model at once, a compensation whose RoundFailed
was lost, and a device that claims an absurd example count.

Each round would succeed without its fault; the test shows it still does (or compensates for
its own reason), with no lease, rollout lock or compensation left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from deploy.stack import LocalStack, ServiceProcess
from edge_client.agent import DeviceAgent
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from schemas import topics
from schemas.base import now_ms
from schemas.codec import decode, encode
from schemas.device import DeviceCommand, DeviceReport, DeviceStatus, DeviceUpdate
from schemas.errors import DecodeError
from schemas.events import RoundFailed, SagaEvent
from schemas.steps import Step
from services.runtime import keys
from services.runtime.state import Field
from tests.integration.conftest import eventually, mqtt_client, request, start_fleet

MODEL = "digits-mlp"
BILLION = 10**9  # the absurd example count a lying device claims


# -- helpers ----------------------------------------------------------------------------------


async def no_leases(saga: FedSaga, fleet: Fleet) -> bool:
    """No device of the fleet is leased to any round."""
    return all([await saga.store.lease_owner(a.device_id) is None for a in fleet.agents])


async def no_rollout_lock(saga: FedSaga) -> bool:
    """No rollout of the model holds its lock."""
    return not await saga.store.redis.exists(keys.rollout(MODEL))


@dataclass
class Seen:
    """One message a watcher received, decoded when it is a saga event, command or report."""

    topic: str
    obj: Any


@dataclass
class Watcher:
    """A plain MQTT client recording saga events, device commands and device reports, in the
    order the broker routed them; `trigger` is called synchronously on each (to strike)."""

    seen: list[Seen] = field(default_factory=list)
    trigger: Callable[[Seen], None] | None = None

    def kinds(self, kind: str, round_id: str | None = None) -> list[Any]:
        """Decoded messages of one kind (for one round, when given), in arrival order."""
        return [
            m.obj
            for m in self.seen
            if getattr(m.obj, "kind", None) == kind
            and (round_id is None or getattr(m.obj, "round_id", None) == round_id)
        ]

    def index(self, kind: str, round_id: str, **match: object) -> int:
        """Arrival position of the first message of `kind` for the round matching `match`."""
        for i, m in enumerate(self.seen):
            o = m.obj
            if (
                getattr(o, "kind", None) == kind
                and getattr(o, "round_id", None) == round_id
                and all(getattr(o, k, None) == v for k, v in match.items())
            ):
                return i
        raise AssertionError(f"no {kind} {match} for {round_id}")

    def receive(self, topic: str, payload: bytes) -> None:
        model: Any
        if topic.startswith("fl/round/"):
            model = SagaEvent
        elif topic.endswith("/cmd"):
            model = DeviceCommand
        elif topic.endswith("/report"):
            model = DeviceReport
        else:
            return
        try:
            obj = decode(payload, model)
        except DecodeError:
            return
        item = Seen(topic, obj)
        self.seen.append(item)
        if self.trigger is not None:
            self.trigger(item)


@contextlib.asynccontextmanager
async def watching(stack: LocalStack) -> AsyncIterator[Watcher]:
    """A Watcher subscribed before the round starts."""
    import aiomqtt

    watcher = Watcher()
    async with mqtt_client(stack, "watch") as client:
        for topic in (topics.ROUND_ALL, topics.COMPENSATED_ALL, "fl/device/+/cmd"):
            await client.subscribe(topic, qos=1)
        await client.subscribe(topics.ALL_REPORTS, qos=1)

        async def read() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                async for message in client.messages:
                    watcher.receive(message.topic.value, bytes(message.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(read())
        try:
            yield watcher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def ensure_serving(proc: ServiceProcess) -> None:
    """Start a service again if a test left it dead (so later tests find the stack whole)."""
    if not proc.running:
        before = proc.serving_count()
        proc.start()
        await asyncio.to_thread(proc.wait_serving, before + 1)


def log_lines(stack: LocalStack, service: str, round_id: str, last: int = 40) -> str:
    """A service's log lines about one round (for assertion messages)."""
    text = stack.services[service].log.read_text(errors="replace")
    return "\n".join([line for line in text.splitlines() if round_id in line][-last:])


async def assert_succeeded_cleanly(
    saga: FedSaga, fleet: Fleet, watcher: Watcher, round_id: str, version: str
) -> None:
    """The round deployed `version`: recorded, announced, nothing rolled back, nothing held."""
    result = await saga.status(round_id)
    assert result.status == "succeeded", result.failure_reason
    assert result.compensations == []
    assert result.versions["deployed"] == version
    record = await saga.store.get_version(MODEL, version)
    assert record["status"] == "deployed", record
    assert record["round_id"] == round_id
    assert await saga.store.outcome(round_id, "failed", RoundFailed) is None

    async def announced() -> bool:
        done = watcher.kinds("round.completed", round_id)
        return any(e.outcome == "succeeded" and e.version == version for e in done)

    await eventually(announced)
    assert watcher.kinds("cmd.rollback", round_id) == []
    assert watcher.kinds("round.failed", round_id) == []
    await eventually(lambda: no_leases(saga, fleet))
    await eventually(lambda: no_rollout_lock(saga))


# -- 1. the deployer killed with kill -9 while canary reports arrive ----------------------------


def _nth(kind: str, n: int, **match: object) -> Callable[[Watcher, str, Seen], bool]:
    """Strike when the `n`-th message of `kind` for the round (matching `match`) arrives."""

    def hit(watcher: Watcher, round_id: str, item: Seen) -> bool:
        o = item.obj
        if getattr(o, "kind", None) != kind or getattr(o, "round_id", None) != round_id:
            return False
        if any(getattr(o, k, None) != v for k, v in match.items()):
            return False
        same = [
            m
            for m in watcher.kinds(kind, round_id)
            if all(getattr(m, k, None) == v for k, v in match.items())
        ]
        return len(same) == n

    return hit


KILL_MOMENTS = {
    # 12 devices, stages 10/50/100%: stage 1 adds 2 devices, stage 2 adds 4, stage 3 adds 6
    "first stage-1 report": _nth("device.report", 1, status="deployed"),
    "stage 1 passed": _nth("canary.stage_passed", 1, stage=1),
    "first stage-2 deploy command": _nth("cmd.deploy", 1, stage=50),
    "mid stage-2 reports": _nth("device.report", 4, status="deployed"),
    "stage 2 passed": _nth("canary.stage_passed", 1, stage=2),
    "last stage-3 deploy command": _nth("cmd.deploy", 6, stage=100),
}


@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
async def test_a_deployer_killed_while_canary_reports_arrive_still_deploys(
    stack: LocalStack, saga: FedSaga, fleet: Fleet, moment: str
) -> None:
    # Prepare: kill -9 the deployer the moment the broker routes the chosen message
    deployer = stack.services["deployer"]
    req = request()
    killed = asyncio.Event()
    at_kill: dict[str, int] = {}
    strike = KILL_MOMENTS[moment]

    try:
        async with asyncio.timeout(60), watching(stack) as watcher:

            def trigger(item: Seen) -> None:
                if not killed.is_set() and strike(watcher, req.round_id, item):
                    at_kill["serving"] = deployer.serving_count()
                    at_kill["completed"] = len(watcher.kinds("round.completed", req.round_id))
                    deployer.kill()
                    killed.set()

            watcher.trigger = trigger

            # Execute: the round runs; the deployer dies mid-rollout and is started again
            task = asyncio.create_task(saga.run(req, timeout=50))
            await killed.wait()
            deployer.start()
            await asyncio.to_thread(deployer.wait_serving, at_kill["serving"] + 1)
            await task

            # Assert: the kill fell mid-rollout, and the round deployed as if nothing happened
            assert at_kill["completed"] == 0
            await assert_succeeded_cleanly(saga, fleet, watcher, req.round_id, "1.0.0")
            assert await saga.store.active_version(MODEL) == "1.0.0", log_lines(
                stack, "deployer", req.round_id
            )
            passed = [e.stage for e in watcher.kinds("canary.stage_passed", req.round_id)]
            assert sorted(set(passed)) == [1, 2, 3]
            assert all(
                a.models.current and a.models.current.version == "1.0.0" for a in fleet.agents
            )
    finally:
        await ensure_serving(deployer)


# -- 2. two rounds at once deploying the same model ----------------------------------------------


async def test_two_rounds_deploying_one_model_at_once_both_succeed_one_after_the_other(
    stack: LocalStack, saga: FedSaga
) -> None:
    # Prepare: one fleet big enough for two disjoint cohorts of 10; both rounds started
    # together, so both reach deployment within moments of each other. Each round's budget
    # (3 iterations x 5 s + 3 stages x 5 s + 60 s) leaves ample room for the wait on the lock.
    fleet = await start_fleet(stack, saga, devices=20, alpha=100.0)
    try:
        async with asyncio.timeout(60), watching(stack) as watcher:
            config = {"training_rounds": 8, "local_epochs": 5, "learning_rate": 0.3}
            first, second = request(**config), request(**config)

            # Execute
            results = await asyncio.gather(
                saga.run(first, timeout=50), saga.run(second, timeout=50)
            )

            # Assert: both deployed their own version, neither rolled back
            for result in results:
                assert result.status == "succeeded", (
                    result.failure_reason,
                    log_lines(stack, "deployer", result.round_id),
                )
            rids = [r.round_id for r in results]
            cohorts = [set(await saga.store.smembers(keys.cohort(r))) for r in rids]
            assert not cohorts[0] & cohorts[1]
            deployed = watcher.kinds("model.deployed")
            assert len(deployed) == 2, deployed
            earlier, later = deployed[0], deployed[1]
            assert {earlier.version, later.version} == {"1.0.0", "1.1.0"}
            for e in deployed:
                await assert_succeeded_cleanly(saga, fleet, watcher, e.round_id, e.version)
            # they overlapped: the later round was validated before the earlier rollout ended
            assert watcher.index("model.validated", later.round_id) < watcher.index(
                "model.deployed", earlier.round_id
            )
            # ...and its rollout waited: its first stage passed after the other rollout ended
            assert watcher.index("model.deployed", earlier.round_id) < watcher.index(
                "canary.stage_passed", later.round_id, stage=1
            )
            # the active version is the one whose rollout finished last, everywhere
            assert await saga.store.active_version(MODEL) == later.version
            assert all(
                a.models.current and a.models.current.version == later.version for a in fleet.agents
            )
    finally:
        await fleet.__aexit__(None, None, None)


# -- 3. a compensation whose triggering RoundFailed was lost -----------------------------------


async def _fail_silently(saga: FedSaga, round_id: str, step: int, reason: str) -> None:
    """What Context.fail writes (status, failed step, reason, the recorded RoundFailed and its
    audit-log entry), as a service that died right before publishing would leave it."""
    moved = await saga.store.transition(
        round_id,
        {Field.STATUS: "running"},
        {Field.STATUS: "compensating", Field.FAILED_STEP: step, Field.FAILURE_REASON: reason},
    )
    assert moved, await saga.store.get_round(round_id)
    failed = RoundFailed(round_id=round_id, step=step, reason=reason)
    _, first = await saga.store.record_outcome(round_id, "failed", failed)
    assert first
    await saga.store.append_event(round_id, "fault-injection", failed)


@pytest.mark.parametrize("step", [Step.VALIDATE, Step.DEPLOY], ids=["validate", "deploy"])
async def test_a_compensation_whose_round_failed_was_lost_is_driven_by_the_deadline(
    stack: LocalStack, saga: FedSaga, fleet: Fleet, step: Step
) -> None:
    # Prepare: the round is failed at `step` in Redis, but RoundFailed is never published.
    # VALIDATE: the validator is paused until the candidate is aggregated, then fails it
    # silently (it finds the round no longer running and does nothing).
    # DEPLOY: failed silently once the first canary stage passed (the deployer then leaves
    # a round that is not running alone, stage timers included).
    validator = stack.services["validator"]
    req = request()
    rid = req.round_id
    reason = f"fault injected at step {int(step)}"
    strike = asyncio.Event()
    try:
        async with asyncio.timeout(60), watching(stack) as watcher:

            def trigger(item: Seen) -> None:
                o = item.obj
                if getattr(o, "round_id", None) != rid:
                    return
                if step == Step.VALIDATE and o.kind == "model.aggregated":
                    strike.set()
                if step == Step.DEPLOY and o.kind == "canary.stage_passed" and o.stage == 1:
                    strike.set()

            watcher.trigger = trigger
            if step == Step.VALIDATE:
                validator.pause()
            await saga.start(req)
            await strike.wait()
            await _fail_silently(saga, rid, int(step), reason)
            if step == Step.VALIDATE:
                validator.resume()

            # The round is stuck: nothing announces the failure, nothing compensates (for
            # DEPLOY, longer than a canary stage's 5 s timeout).
            await asyncio.sleep(6.0 if step == Step.DEPLOY else 2.0)
            state = await saga.store.get_round(rid)
            assert state.status == "compensating"
            assert watcher.kinds("round.failed", rid) == []
            assert watcher.kinds("step.compensated", rid) == []

            # Execute: the selector's round deadline comes due now
            await saga.store.schedule("selector", rid, "deadline", now_ms())

            # Assert: the recorded failure is announced again and every compensation runs
            async def ended() -> bool:
                return bool(watcher.kinds("round.completed", rid))

            await eventually(ended, timeout=20)
            result = await saga.status(rid)
            assert result.status == "failed"
            assert result.failed_step == int(step)
            assert result.failure_reason == reason
            done = watcher.kinds("round.completed", rid)
            assert [(e.outcome, e.reason) for e in done][:1] == [("failed", reason)]
            order = [int(c.split(":")[0]) for c in result.compensations]
            assert order == list(range(int(step), 0, -1)), result.compensations
            assert [e.step for e in watcher.kinds("round.failed", rid)][:1] == [int(step)]
            await eventually(lambda: no_leases(saga, fleet))
            await eventually(lambda: no_rollout_lock(saga))
            assert await saga.store.active_version(MODEL) is None
            version = state.candidate_version
            if version:
                record = await saga.store.get_version(MODEL, version)
                assert record["status"] in {"rolled_back", "rejected"}, record
            if step == Step.DEPLOY:
                assert watcher.kinds("cmd.rollback", rid)
    finally:
        validator.resume()


# -- 4. a device that claims an absurd example count ------------------------------------------


def _lie_about_examples(agent: DeviceAgent, claim: int) -> None:
    """Make one simulated device register `claim` examples and report it in its updates."""
    honest_status = agent.status
    honest_publish = agent._publish

    def status(state: Any = None) -> DeviceStatus:
        return honest_status(state).model_copy(update={"num_examples": claim})

    async def publish(template: str, message: Any, **kwargs: Any) -> bool:
        if isinstance(message, DeviceUpdate):
            message = message.model_copy(update={"num_examples": claim})
        return await honest_publish(template, message, **kwargs)

    agent.status = status  # type: ignore[method-assign]
    agent._publish = publish  # type: ignore[method-assign]


async def test_a_device_claiming_a_billion_examples_cannot_dominate_fedavg(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: one of the twelve registers (and reports) 10^9 examples
    liar = fleet.agents[0]
    honest = {a.device_id: len(a._y) for a in fleet.agents[1:]}
    _lie_about_examples(liar, BILLION)
    await liar.publish_status()

    async def registered() -> bool:
        device = await saga.store.device(liar.device_id)
        return device is not None and device.num_examples == BILLION

    await eventually(registered)
    req = request(cohort_size=len(fleet.agents))

    # Execute
    async with asyncio.timeout(60):
        result = await saga.run(req, timeout=50)

    # Assert: the round succeeded with the liar in it, its weight capped
    assert result.status == "succeeded", result.failure_reason
    cohort = set(await saga.store.smembers(keys.cohort(req.round_id)))
    assert liar.device_id in cohort
    assert result.participation["participants_per_iteration"] == [len(cohort)] * 3
    cap = math.ceil(4 * statistics.median([*honest.values(), BILLION]))
    state = await saga.store.get_round(req.round_id)
    assert state.example_cap == cap
    events = await saga.store.events(req.round_id)
    received = [e for e in events if e["kind"] == "update.received"]
    assert any(e["num_examples"] == BILLION for e in received)  # the claim did reach it
    sums = [e["num_examples"] for e in events if e["kind"] == "iteration.completed"]
    assert len(sums) == 2
    for total in sums:
        assert total == sum(honest.values()) + cap
        assert total < BILLION / 1000
    # the liar weighs at most a few typical devices' worth
    assert cap <= 4 * max(honest.values())
    await eventually(lambda: no_leases(saga, fleet))


# -- 5. a validator killed after claiming a version ---------------------------------------------


async def test_a_version_claimed_by_a_validator_that_died_is_completed_not_skipped(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: the validator is paused until the candidate is aggregated; then its claim of
    # 1.0.0 is written as a validator that died right after claiming would have left it:
    # the number owned by the round, no record, no index entry, no round field.
    validator = stack.services["validator"]
    req = request()
    rid = req.round_id
    aggregated = asyncio.Event()
    try:
        async with asyncio.timeout(60), watching(stack) as watcher:

            def trigger(item: Seen) -> None:
                o = item.obj
                if getattr(o, "round_id", None) == rid and o.kind == "model.aggregated":
                    aggregated.set()

            watcher.trigger = trigger
            validator.pause()
            task = asyncio.create_task(saga.run(req, timeout=50))
            await aggregated.wait()
            assert await saga.store.claim_version(MODEL, "1.0.0", rid) == rid
            assert await saga.store.versions(MODEL) == []

            # Execute: the validator comes back (as a restarted one replaying its journal)
            validator.resume()
            result = await task
    finally:
        validator.resume()

    # Assert: the round keeps the number it claimed, and its record is whole
    assert result.status == "succeeded", result.failure_reason
    assert result.versions["candidate"] == "1.0.0"
    assert await saga.store.versions(MODEL) == ["1.0.0"]
    record = await saga.store.get_version(MODEL, "1.0.0")
    assert record["round_id"] == rid
    assert record["status"] == "deployed"
    assert record["digest"] == (await saga.store.get_round(rid)).candidate_digest
    assert "accuracy" in record["metrics"]


# -- 6. a registry that forgets ----------------------------------------------------------------


async def test_devices_not_heard_from_are_neither_selected_nor_deployed_to_and_then_forgotten(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: 50 statuses from devices that never held a session (anyone may publish on the
    # dev broker), then time passes for them: their last word is older than the freshness
    # window (5 min), and 10 of them older than the registry's TTL (a week).
    s = stack.settings
    fakes = [f"ghost-{i:03d}" for i in range(50)]
    async with mqtt_client(stack, "ghosts") as client:
        for device_id in fakes:
            status = DeviceStatus(device_id=device_id, num_examples=100, charging=True)
            await client.publish(
                topics.device(topics.DEVICE_STATUS, device_id), encode(status), qos=1
            )

    async def all_registered() -> bool:
        return {d.device_id for d in await saga.store.devices()} >= set(fakes)

    await eventually(all_registered)
    now = now_ms()
    stale = {d: now - s.device_fresh_ms - 60_000 for d in fakes[10:]}
    gone = {d: now - s.key_ttl_s * 1000 - 60_000 for d in fakes[:10]}
    await saga.store.redis.zadd(keys.devices_seen(), {**stale, **gone})

    # Execute: a round that would take up to 60 devices
    result = await saga.run(request(cohort_size=60), timeout=50)

    # Assert: it ran on the real fleet only, deployed to it only, and forgot the oldest
    assert result.status == "succeeded", result.failure_reason
    real = {a.device_id for a in fleet.agents}
    cohort = set(await saga.store.smembers(keys.cohort(result.round_id)))
    assert cohort == real
    deployed = await saga.store.hgetall(keys.deployment(result.round_id))
    assert set(deployed) <= real
    registered = {d.device_id for d in await saga.store.devices()}
    assert registered.isdisjoint(fakes[:10])
    assert set(fakes[10:]) <= registered
