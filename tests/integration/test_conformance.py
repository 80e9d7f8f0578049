"""A device written from docs/device-protocol.md alone (tests/conformance/device.py) takes part
in whole rounds with the real services: selected, trains, its updates counted, deployed to,
reports; and when it sends a bad update, it is told why on its `rejected` topic."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from deploy.stack import LocalStack
from edge_client.fleet import FleetSpec, device_data
from federated.payload import apply_payload, read_payload
from fedsaga.client import FedSaga
from services.runtime import keys
from tests.conformance.device import ConformanceDevice, compress, write_update
from tests.integration.conftest import request, start_fleet
from tests.integration.test_bad_input import _nan_payload

FLEET = 5  # simulated devices beside the conformance device


@contextlib.asynccontextmanager
async def conformance_device(
    stack: LocalStack, saga: FedSaga, *, hold: bool = False
) -> AsyncIterator[ConformanceDevice]:
    """The conformance device, connected and registered, with digits no holdout holds."""
    s = stack.settings
    spec = FleetSpec(devices=4, seed=7, data_seed=s.data_seed, holdout_fraction=s.holdout_fraction)
    x, y = device_data(spec)[0]
    device = ConformanceDevice(
        f"conf-{uuid.uuid4().hex[:6]}", x, y, host=s.mqtt_host, port=s.mqtt_port, hold=hold
    )
    await asyncio.to_thread(device.start)
    try:
        async with asyncio.timeout(10):
            while await saga.store.device(device.device_id) is None:
                await asyncio.sleep(0.05)
        yield device
    finally:
        device.release()
        await asyncio.to_thread(device.stop)


async def counted(saga: FedSaga, round_id: str, device_id: str) -> list[int]:
    """The iterations whose FedAvg took this device's update, from the round's log."""
    return [
        e["iteration"]
        for e in await saga.store.events(round_id)
        if e["kind"] == "update.received" and e["device_id"] == device_id
    ]


async def wait_until(predicate: Any, timeout: float) -> None:
    """Poll a condition on the device's threads' state, within a bound."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_a_device_written_from_the_spec_runs_a_whole_round(
    stack: LocalStack, saga: FedSaga
) -> None:
    # Prepare: a small fleet and the conformance device; the cohort takes every device
    fleet = await start_fleet(stack, saga, devices=FLEET)
    try:
        async with conformance_device(stack, saga) as device:
            req = request(cohort_size=FLEET + 1, training_rounds=3)

            # Execute
            result = await saga.run(req, timeout=120)

            # Assert: the round succeeded with the device selected and each update counted once
            rid, me = req.round_id, device.device_id
            assert result.status == "succeeded", result.failure_reason
            assert me in await saga.store.smembers(keys.cohort(rid))
            assert await counted(saga, rid, me) == [0, 1, 2]
            # ...its payloads framed the digest as the services do (they rebuild and verify)
            for update in device.updates:
                base = await saga.store.get_params(update["base_digest"])
                assert base is not None
                apply_payload(read_payload(update["blob"]), base)
            # ...it was deployed to, reported healthy, and announces the version
            version = result.versions["deployed"]
            deployment = await saga.store.hgetall(keys.deployment(rid))
            assert deployment[me].startswith("ok:")
            deployed = [r for r in device.reports if r["status"] == "deployed"]
            assert [r["version"] for r in deployed] == [version]
            assert set(deployed[0]["metrics"]) == {"accuracy", "previous_accuracy"}
            status = await saga.store.device(me)
            assert status is not None
            assert device.serving is not None
            assert (status.model_version, status.model_digest) == (version, device.serving[0])
            assert device.rejections == []

            # Execute: a retransmission (same msg_id) is dropped as handled; the same update
            # as a new message is refused, and the device is told why
            device.retransmit_update(rid, 0)
            await asyncio.sleep(1.0)
            assert device.rejections == []
            first = device.updates[0]
            device.publish_update(rid, 0, first["base_digest"], first["blob"])
            await wait_until(lambda: device.rejections, timeout=10)

            # Assert
            (told,) = device.rejections
            assert (told["kind"], told["service"], told["round_id"]) == (
                "device.rejected",
                "aggregator",
                rid,
            )
            assert told["topic"] == f"fl/device/{me}/update"
            assert told["reason"] == f"round {rid} is succeeded"
            assert await counted(saga, rid, me) == [0, 1, 2]
    finally:
        await fleet.__aexit__(None, None, None)


def _raw_digest_update(blob: bytes) -> bytes:
    """A good update whose digest is sent as 32 raw bytes instead of 64 hex characters."""
    doc = read_payload(blob)  # only to reuse the tensors; re-encoded as float32 below
    tensors = [
        {"name": n, "shape": list(v.shape), "q": v.astype("<f4").tobytes(), "scales": b""}
        for n, v in doc.delta.items()
    ]
    return compress(
        {
            "v": 1,
            "method": "float32",
            "block": 256,
            "base_digest": doc.base_digest,
            "digest": bytes.fromhex(doc.digest),
            "tensors": tensors,
        }
    )


async def test_a_device_is_told_why_its_updates_were_refused(
    stack: LocalStack, saga: FedSaga
) -> None:
    # Prepare: the device holds its training until the test has sent bad updates
    fleet = await start_fleet(stack, saga, devices=FLEET)
    try:
        async with conformance_device(stack, saga, hold=True) as device:
            req = request(
                cohort_size=FLEET + 1,
                training_rounds=1,
                target_accuracy=0.1,
                iteration_timeout_ms=30_000,
            )
            run = asyncio.create_task(saga.run(req, timeout=120))
            rid, me = req.round_id, device.device_id

            def train_command() -> dict[str, Any] | None:
                return next((c for c in device.commands if c["kind"] == "cmd.train"), None)

            await wait_until(
                lambda: (c := train_command()) is not None and c["model_digest"] in device.models,
                timeout=30,
            )
            command = train_command()
            assert command is not None
            held = command["model_digest"]
            base = device.models[held]
            good = write_update({k: v + np.float32(0.01) for k, v in base.items()}, base, held)
            bad = {
                "bad update payload: tensor 'w0' decodes to non-finite values": (
                    held,
                    _nan_payload(base, held),
                ),
                "bad update payload: digest must be 64 lowercase hex characters": (
                    held,
                    _raw_digest_update(good),
                ),
                "update is not against the model this device was sent": ("f" * 64, good),
            }

            # Execute
            for base_digest, blob in bad.values():
                device.publish_update(rid, 0, base_digest, blob)
            await wait_until(lambda: len(device.rejections) >= len(bad), timeout=10)
            device.release()
            result = await run

            # Assert: told why each was refused, on its own topic; then its real update counted
            assert sorted(r["reason"] for r in device.rejections) == sorted(bad)
            for told in device.rejections:
                assert (told["service"], told["round_id"], told["device_id"]) == (
                    "aggregator",
                    rid,
                    me,
                )
            assert await counted(saga, rid, me) == [0]
            assert result.status == "succeeded", result.failure_reason
    finally:
        await fleet.__aexit__(None, None, None)
