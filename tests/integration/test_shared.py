"""Two aggregators and two coordinators sharing their subscriptions ($share), on a real stack.

The running sum lives in Redis behind a compare-and-write (the contributor count is its
version), so instances folding updates of one iteration at once combine into one sum; the
coordinators settle devices through counters in Redis. The round must succeed with every
update counted once, and both instances of each must have done part of the work.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest

from deploy.stack import LocalStack
from fedsaga.client import FedSaga
from tests.integration.conftest import assert_each_update_counted_once, request, start_fleet

SHARED = {"aggregator": 2, "trainer_coordinator": 2}


@pytest.fixture(scope="module")
def shared_stack() -> Iterator[LocalStack]:
    with LocalStack(shared=SHARED) as stack:
        yield stack


@pytest.fixture
async def shared_saga(shared_stack: LocalStack) -> AsyncIterator[FedSaga]:
    async with FedSaga(shared_stack.settings) as saga:
        yield saga


def handled(stack: LocalStack, label: str, message: str) -> float:
    """How many messages of a kind an instance handled, from its Prometheus metrics."""
    text = urllib.request.urlopen(stack.services[label].metrics_url, timeout=5).read().decode()
    prefix = f'fedsaga_handler_seconds_count{{message="{message}"'
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


async def test_shared_instances_split_the_work_and_count_each_update_once(
    shared_stack: LocalStack, shared_saga: FedSaga
) -> None:
    # Prepare: twenty devices, whose updates arrive as a burst the two aggregators share
    fleet = await start_fleet(shared_stack, shared_saga, devices=20)
    try:
        req = request(training_rounds=3, cohort_size=20, iteration_timeout_ms=30_000)

        # Execute
        result = await shared_saga.run(req, timeout=90)
    finally:
        await fleet.__aexit__(None, None, None)

    # Assert: one sum per iteration with every update once, and both instances worked
    assert result.status == "succeeded", result.failure_reason
    await assert_each_update_counted_once(shared_saga, req, result)
    updates = [handled(shared_stack, f"aggregator-{i}", "DeviceUpdate") for i in "ab"]
    received = [handled(shared_stack, f"trainer_coordinator-{i}", "UpdateReceived") for i in "ab"]
    assert sum(updates) == 60, updates
    assert min(updates) > 0, updates
    assert sum(received) >= 60, received
    assert min(received) > 0, received
