"""Faults of the service processes during an update burst: kill -9 and SIGSTOP.

Each test strikes when the `nth` update of an iteration reaches the broker, so the service has
some updates handled, some in hand and some still queued, and expects the round to succeed with
every device's update counted exactly once. Each leaves the service serving again.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import pytest

from deploy.stack import LocalStack, ServiceProcess
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from tests.integration.conftest import (
    UpdateBurst,
    assert_each_update_counted_once,
    on_updates,
    request,
)

# The services' MQTT keepalive is 15 s: the broker drops a silent client after 1.5x that, as
# it checks (mosquitto 2.0 was seen taking several seconds more on a loaded machine).
MAX_PAUSE_S = 60.0


def _log_tail(proc: ServiceProcess, lines: int = 30) -> str:
    """The service's last connection, retry and error lines, to explain a failure."""
    words = ("serving", "connection lost", "retry", "replay", "error", "dead letter", "task")
    text = proc.log.read_text(errors="replace").splitlines()
    return "\n".join([line for line in text if any(w in line for w in words)][-lines:])


def _broker_drops(stack: LocalStack, proc: ServiceProcess) -> int:
    """How many times the broker's log says it dropped the service for silence."""
    client_id = proc.settings.service_identity(proc.name)
    line = f"Client {client_id} has exceeded timeout"
    return stack.servers.broker.log.read_text(errors="replace").count(line)


async def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.2)


@pytest.fixture
async def serving(stack: LocalStack) -> AsyncIterator[dict[str, ServiceProcess]]:
    """The stack's services, each left running and serving after the test, whatever it did."""
    yield stack.services
    for proc in stack.services.values():
        proc.resume()
        if not proc.running:
            before = proc.serving_count()
            proc.start()
            await asyncio.to_thread(proc.wait_serving, before + 1)


@pytest.mark.parametrize(
    ("iteration", "nth"),
    [(0, 1), (0, 10), (1, 5), (1, 20)],
    ids=["it0-first", "it0-middle", "it1-early", "it1-last"],
)
async def test_aggregator_killed_during_an_update_burst_loses_no_update(
    stack: LocalStack,
    serving: dict[str, ServiceProcess],
    saga: FedSaga,
    burst_fleet: Fleet,
    iteration: int,
    nth: int,
) -> None:
    # Prepare
    aggregator = serving["aggregator"]
    req = request(training_rounds=3, cohort_size=20, iteration_timeout_ms=30_000)
    burst = UpdateBurst(iteration, nth)

    # Execute: kill -9 at the nth update of the iteration, start again at once
    async with asyncio.timeout(60), on_updates(stack, burst.seen):
        task = asyncio.create_task(saga.run(req, timeout=55))
        await burst.arrived.wait()
        aggregator.kill()
        await asyncio.to_thread(aggregator.restart)
        result = await task

    # Assert
    assert result.status == "succeeded", f"{result.failure_reason}\n{_log_tail(aggregator)}"
    await assert_each_update_counted_once(saga, req, result)


@pytest.mark.parametrize("name", ["aggregator", "trainer_coordinator"])
async def test_a_service_stopped_past_its_keepalive_loses_no_update(
    stack: LocalStack,
    serving: dict[str, ServiceProcess],
    saga: FedSaga,
    burst_fleet: Fleet,
    name: str,
) -> None:
    # Prepare: an iteration deadline well past the pause
    proc = serving[name]
    req = request(
        training_rounds=2, cohort_size=20, target_accuracy=0.3, iteration_timeout_ms=50_000
    )
    burst = UpdateBurst(0, 5)

    # Execute: SIGSTOP mid-burst until the broker says it dropped the service, then SIGCONT
    async with asyncio.timeout(MAX_PAUSE_S + 45), on_updates(stack, burst.seen):
        task = asyncio.create_task(saga.run(req, timeout=MAX_PAUSE_S + 40))
        await burst.arrived.wait()
        before = proc.serving_count()
        dropped = _broker_drops(stack, proc)
        proc.pause()
        try:
            await _wait_for(lambda: _broker_drops(stack, proc) > dropped, MAX_PAUSE_S)
        finally:
            proc.resume()
        try:
            await asyncio.to_thread(proc.wait_serving, before + 1)  # it reconnected
        except TimeoutError as exc:
            assert proc.process is not None
            proc.process.send_signal(signal.SIGUSR1)  # it logs what each task awaits
            await asyncio.sleep(1.0)
            raise AssertionError(f"{name} did not reconnect:\n{_log_tail(proc)}") from exc
        result = await task

    # Assert
    assert result.status == "succeeded", f"{result.failure_reason}\n{_log_tail(proc)}"
    await assert_each_update_counted_once(saga, req, result)
