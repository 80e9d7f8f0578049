"""Faults of the infrastructure itself: the broker restarts mid-round."""

from __future__ import annotations

import asyncio

from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from tests.integration.conftest import request


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
