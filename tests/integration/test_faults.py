"""Faults of the infrastructure itself: the broker or Redis restarts mid-round."""

from __future__ import annotations

import asyncio
import time

import pytest

from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from tests.integration.conftest import (
    UpdateBurst,
    assert_each_update_counted_once,
    on_updates,
    request,
)


async def test_a_round_survives_a_broker_restart(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: restart mosquitto (persistence on) once the second iteration's weights are out
    req = request(training_rounds=4, iteration_timeout_ms=20_000)
    second = asyncio.Event()

    def on_event(_topic: str, event: object) -> None:
        if getattr(event, "kind", "") == "weights.distributed" and event.iteration == 1:  # type: ignore[attr-defined]
            second.set()

    saga.on_event(on_event)

    # Execute
    task = asyncio.create_task(saga.run(req, timeout=90))
    await asyncio.wait_for(second.wait(), 30)
    await asyncio.to_thread(stack.servers.broker.restart)
    result = await task

    # Assert: services and devices reconnected to their persistent sessions and finished
    assert result.status == "succeeded", result.failure_reason
    assert result.versions["active"] == "1.0.0"
    assert result.participation["participants_per_iteration"] == [10, 10, 10, 10]
    assert result.participation["failures"] == {}


@pytest.mark.parametrize(("iteration", "nth"), [(0, 3), (1, 12)], ids=["it0-early", "it1-middle"])
async def test_a_broker_restart_during_an_update_burst_loses_no_update(
    stack: LocalStack, saga: FedSaga, burst_fleet: Fleet, iteration: int, nth: int
) -> None:
    # Prepare
    req = request(training_rounds=3, cohort_size=20, iteration_timeout_ms=30_000)
    burst = UpdateBurst(iteration, nth)

    # Execute: a graceful restart (SIGTERM; persistence on) at the nth update of the iteration
    async with asyncio.timeout(60):
        async with on_updates(stack, burst.seen):
            task = asyncio.create_task(saga.run(req, timeout=55))
            await burst.arrived.wait()
        await asyncio.to_thread(stack.servers.broker.restart)
        result = await task

    # Assert
    assert result.status == "succeeded", result.failure_reason
    await assert_each_update_counted_once(saga, req, result)


@pytest.mark.parametrize(
    ("iteration", "nth", "outage_s"),
    [(0, 5, 0.5), (1, 10, 2.0)],
    ids=["it0-0.5s", "it1-2s"],
)
async def test_a_redis_restart_mid_round_loses_no_update(
    stack: LocalStack,
    saga: FedSaga,
    burst_fleet: Fleet,
    iteration: int,
    nth: int,
    outage_s: float,
) -> None:
    # Prepare
    req = request(training_rounds=3, cohort_size=20, iteration_timeout_ms=30_000)
    burst = UpdateBurst(iteration, nth)
    redis = stack.servers.redis

    def outage() -> None:
        redis.stop()  # SIGTERM: Redis writes its AOF out and exits
        time.sleep(outage_s)
        redis.start()

    # Execute: Redis away for outage_s at the nth update of the iteration
    async with asyncio.timeout(60), on_updates(stack, burst.seen):
        task = asyncio.create_task(saga.run(req, timeout=55))
        await burst.arrived.wait()
        await asyncio.to_thread(outage)
        result = await task

    # Assert
    assert result.status == "succeeded", result.failure_reason
    await assert_each_update_counted_once(saga, req, result)
