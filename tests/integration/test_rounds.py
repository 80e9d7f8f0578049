"""Whole rounds through the real broker, the real Redis and the six service processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from schemas.ops import Chaos
from services.runtime import keys
from tests.integration.conftest import Probe, eventually, request


async def _all(values: Iterable[bool]) -> bool:
    return all(values)


async def _no_leases(saga: FedSaga, fleet: Fleet) -> bool:
    return all([await saga.store.lease_owner(a.device_id) is None for a in fleet.agents])


def _order(result: object) -> list[int]:
    return [int(c.split(":")[0]) for c in result.compensations]  # type: ignore[attr-defined]


async def test_happy_path_deploys_a_new_version_through_every_canary_stage(
    saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare
    req = request()

    # Execute
    result = await saga.run(req, timeout=60)

    # Assert
    assert result.status == "succeeded", result.failure_reason
    assert result.steps_done == [
        "selector",
        "distributor",
        "trainer_coordinator",
        "aggregator",
        "validator",
        "deployer",
    ]
    assert result.compensations == []
    assert result.versions["deployed"] == result.versions["active"] == "1.0.0"
    assert result.metrics["accuracy"] >= req.target_accuracy
    assert set(result.metrics) >= {"accuracy", "precision", "recall", "f1"}
    assert result.participation["participants_per_iteration"] == [10, 10, 10]
    # every device in the fleet now serves the new version, and still has nothing leased
    assert all(a.models.current and a.models.current.version == "1.0.0" for a in fleet.agents)
    await eventually(lambda: _no_leases(saga, fleet))
    # int8 deltas: well under a third of float32 both ways
    assert 0 < result.bytes["down_vs_float32"] < 0.33
    assert 0 < result.bytes["up_vs_float32"] < 0.33
    record = await saga.store.get_version("digits-mlp", "1.0.0")
    assert record["status"] == "deployed"
    assert record["round_id"] == req.round_id
    assert record["digest"] == (await saga.store.get_round(req.round_id)).candidate_digest
    stages = [
        e for e in await saga.store.events(req.round_id) if e["kind"] == "canary.stage_passed"
    ]
    # 12 devices: 10% -> 2, 50% -> 6, 100% -> 12, each stage adding its new devices
    assert [(e["percent"], e["devices"]) for e in stages] == [(10, 2), (50, 4), (100, 6)]


async def test_ops_start_a_round_with_plain_json_as_mosquitto_pub_sends_it(
    saga: FedSaga, fleet: Fleet, probe: Probe
) -> None:
    # Execute: what `mosquitto_pub -t fl/ops/round/start -m '{...}'` publishes
    body = b' {"round_id": "json-1", "training_rounds": 2, "target_accuracy": 0.5,'
    body += b' "create_model": true}\n'  # a leading space and a newline, as typed by hand
    await probe.client.publish("fl/ops/round/start", body, qos=1)

    # Assert
    async def done() -> bool:
        return await saga.store.last_event_kind("json-1") == "round.completed"

    await eventually(done, timeout=30)
    result = await saga.status("json-1")
    assert result.status == "succeeded", result.failure_reason
    assert result.participation["cohort"] == 12


async def test_a_second_round_builds_on_the_first_and_gets_a_later_version(
    saga: FedSaga, fleet: Fleet
) -> None:
    first = await saga.run(request(), timeout=60)
    second = await saga.run(request(target_accuracy=0.6), timeout=60)

    assert first.versions["deployed"] == "1.0.0"
    assert second.status == "succeeded", second.failure_reason
    assert second.versions["parent"] == "1.0.0"
    assert second.versions["active"] == "1.1.0"
    record = await saga.store.get_version("digits-mlp", "1.1.0")
    assert record["parent"] == "1.0.0"
    # devices held 1.0.0, so the round's first payloads were deltas against it
    assert (
        second.bytes["down_per_device_iteration"] < first.bytes["down_per_device_iteration"] * 1.5
    )


async def test_insufficient_participation_stops_revokes_releases_in_that_order(
    saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: a deployed version that must stay active
    good = await saga.run(request(), timeout=60)

    # Execute
    bad = await saga.run(request(simulate_failure=Chaos.PARTICIPATION), timeout=60)

    # Assert
    assert bad.status == "failed"
    assert bad.failed_step == 3
    assert "insufficient participation" in (bad.failure_reason or "")
    assert _order(bad) == [3, 2, 1]
    kinds = [e["kind"] for e in bad.timeline]
    assert kinds.index("round.failed") < kinds.index("step.compensated")
    assert kinds[-1] == "round.completed"
    assert set(bad.participation["failure_reasons"]) <= {
        "battery_died",
        "network_timeout",
        "device_suspended",
    }
    assert bad.versions["active"] == good.versions["deployed"]
    await eventually(lambda: _all(bad.round_id not in a.models.rounds for a in fleet.agents))
    await eventually(lambda: _no_leases(saga, fleet))


async def test_validation_failure_compensates_every_step_and_keeps_the_old_version(
    saga: FedSaga, fleet: Fleet
) -> None:
    result = await saga.run(request(target_accuracy=0.999), timeout=60)

    assert result.status == "failed"
    assert result.failed_step == 5
    assert _order(result) == [5, 4, 3, 2, 1]
    assert "below target" in (result.failure_reason or "")
    assert result.versions["active"] is None
    state = await saga.store.get_round(result.round_id)
    assert "accuracy" in (state.validation_failure or "")
    assert not await saga.store.redis.exists(keys.accumulator(result.round_id, 2))


async def test_corrupted_updates_fail_validation(saga: FedSaga, fleet: Fleet) -> None:
    result = await saga.run(request(simulate_failure=Chaos.VALIDATION), timeout=60)

    assert result.failed_step == 5
    assert result.metrics["accuracy"] < 0.5


async def test_canary_health_regression_rolls_back(saga: FedSaga, fleet: Fleet) -> None:
    good = await saga.run(request(), timeout=60)

    bad = await saga.run(request(simulate_failure=Chaos.DEPLOYMENT), timeout=60)

    assert bad.status == "failed"
    assert bad.failed_step == 6
    assert "canary stage 1" in (bad.failure_reason or "")
    assert _order(bad) == [6, 5, 4, 3, 2, 1]
    assert bad.versions["active"] == good.versions["deployed"] == "1.0.0"
    record = await saga.store.get_version("digits-mlp", bad.versions["candidate"] or "")
    assert record["status"] == "rolled_back"
    await eventually(
        lambda: _all(
            a.models.current is not None and a.models.current.version == "1.0.0"
            for a in fleet.agents
        )
    )


async def test_too_few_eligible_devices_fails_at_selection(saga: FedSaga, fleet: Fleet) -> None:
    result = await saga.run(request(min_participating_nodes=50, cohort_size=60), timeout=30)

    assert result.status == "failed"
    assert result.failed_step == 1
    assert _order(result) == [1]
    await eventually(lambda: _no_leases(saga, fleet))


async def test_restarted_service_picks_the_round_up(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: kill -9 the aggregator as soon as the round's first weights are out
    req = request(training_rounds=4, iteration_timeout_ms=30_000)
    killed = asyncio.Event()

    def on_event(_topic: str, event: object) -> None:
        if getattr(event, "kind", "") == "weights.distributed" and not killed.is_set():
            killed.set()
            stack.services["aggregator"].stop(kill=True)

    saga.on_event(on_event)

    # Execute
    task = asyncio.create_task(saga.run(req, timeout=90))
    await asyncio.wait_for(killed.wait(), 30)
    await asyncio.sleep(0.5)  # updates queue up in the broker for the dead aggregator
    await asyncio.to_thread(stack.services["aggregator"].restart)
    result = await task

    # Assert
    assert result.status == "succeeded", result.failure_reason
    assert result.participation["participants_per_iteration"] == [10, 10, 10, 10]
