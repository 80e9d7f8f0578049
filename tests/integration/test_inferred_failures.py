"""Failures the coordinator infers: a device that dies (last will) or goes silent (deadline)."""

from __future__ import annotations

import asyncio
import os
import sys

from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from schemas.codec import decode
from schemas.device import TrainCommand
from tests.integration.conftest import Probe, request


async def test_a_device_killed_mid_training_is_failed_by_its_last_will(
    stack: LocalStack, saga: FedSaga, fleet: Fleet, probe: Probe
) -> None:
    # Prepare: three more devices in their own OS process, which we will kill -9
    env = {**os.environ, **stack.settings.env()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_client",
        "--devices",
        "3",
        "--prefix",
        "doomed",
        "--slowdown",
        "60",  # they must still be training when the process dies
        "--low-battery-share",
        "0",
        env=env,
    )
    try:
        async with asyncio.timeout(15):
            while sum(d.device_id.startswith("doomed") for d in await saga.store.devices()) < 3:
                await asyncio.sleep(0.05)
        req = request(cohort_size=15, training_rounds=2, iteration_timeout_ms=20_000)

        # Execute: the process dies as soon as one of its devices is told to train
        task = asyncio.create_task(saga.run(req, timeout=60))
        await probe.wait_for("fl/device/doomed-", 1, timeout=20)
        while not any(isinstance(_train(p), TrainCommand) for p in probe.on("fl/device/doomed-")):
            await asyncio.sleep(0.01)
        proc.kill()
        result = await task
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

    # Assert: the round went on without them, well before the 20 s deadline
    assert result.status == "succeeded", result.failure_reason
    assert result.participation["failure_reasons"] == {"went_offline": 3}
    assert result.participation["participants_per_iteration"] == [12, 12]


def _train(payload: bytes) -> object:
    try:
        return decode(payload, TrainCommand)
    except Exception:
        return None


async def test_a_silent_device_is_failed_at_the_deadline(saga: FedSaga, fleet: Fleet) -> None:
    # Prepare: one device takes train commands and never answers
    silent = fleet.agents[0]

    async def swallow(cmd: object) -> None:
        return None

    silent.train = swallow  # type: ignore[method-assign,assignment]

    # Execute
    result = await saga.run(
        request(cohort_size=12, training_rounds=2, iteration_timeout_ms=4_000), timeout=60
    )

    # Assert: failed at the first deadline, left out of the second iteration
    assert result.status == "succeeded", result.failure_reason
    assert result.participation["failures"] == {silent.device_id: "deadline_passed (iteration 0)"}
    assert result.participation["participants_per_iteration"] == [11, 11]
