"""Bad input is rejected with a reason on fl/errors/{service}; nothing else changes."""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import zstandard

from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from federated.model import init_mlp
from federated.payload import make_payload
from fedsaga.client import FedSaga
from schemas.codec import decode, encode
from schemas.device import DeviceUpdate
from schemas.events import ErrorReport, ModelValidated, NodesSelected, TrainingCompleted
from services.runtime import keys
from tests.integration.conftest import Probe, request, start_fleet


def _nan_payload(params: dict[str, np.ndarray], base_digest: str) -> bytes:
    """A well-formed float32 payload (wire format v1) whose values are NaN."""
    tensors = [
        {
            "name": k,
            "shape": list(v.shape),
            "q": np.full(v.size, np.nan, "<f4").tobytes(),
            "scales": b"",
        }
        for k, v in params.items()
    ]
    doc = {
        "v": 1,
        "method": "float32",
        "block": 256,
        "base_digest": base_digest,
        "digest": "0" * 64,
        "tensors": tensors,
    }
    return zstandard.ZstdCompressor().compress(msgpack.packb(doc, use_bin_type=True))


def _errors(probe: Probe, service: str) -> list[ErrorReport]:
    return [decode(p, ErrorReport) for p in probe.on(f"fl/errors/{service}")]


async def test_garbage_on_service_topics_is_reported_and_the_services_keep_running(
    saga: FedSaga, fleet: Fleet, probe: Probe
) -> None:
    # Execute: junk where each service listens
    await probe.client.publish("fl/ops/round/start", b"\x00\xffnot msgpack", qos=1)
    await probe.client.publish("fl/ops/round/start", b'{"round_id": "has spaces"}', qos=1)
    await probe.client.publish("fl/device/x1/update", b"\xc1", qos=1)
    await probe.client.publish("fl/round/r9/model_validated", b"[1, 2]", qos=1)

    # Assert: each is reported with a reason...
    await probe.wait_for("fl/errors/selector", 2)
    await probe.wait_for("fl/errors/aggregator", 1)
    await probe.wait_for("fl/errors/deployer", 1)
    reasons = [e.reason for e in _errors(probe, "selector")]
    assert any("not msgpack" in r for r in reasons)
    assert any("round_id" in r for r in reasons)
    assert await saga.store.rounds() == []
    # ...and the services still run a round end to end
    result = await saga.run(request(), timeout=60)
    assert result.status == "succeeded"


async def test_bad_updates_mid_round_are_rejected_and_change_nothing(
    stack: LocalStack, saga: FedSaga, probe: Probe
) -> None:
    # Prepare: slow devices keep iteration 0 open while we send bad updates into it
    fleet = await start_fleet(stack, saga, slowdown_s=2.0)
    try:
        req = request(training_rounds=1, target_accuracy=0.1, iteration_timeout_ms=30_000)
        task = asyncio.create_task(saga.run(req, timeout=90))
        await probe.wait_for(f"fl/round/{req.round_id}/weights_distributed", timeout=30)
        member = sorted((await saga.store.hgetall(keys.held(req.round_id))).items())[0]
        device, held = member
        blob, _ = make_payload(
            init_mlp((64, 32, 10), np.random.default_rng(0)), None, rng=np.random.default_rng(0)
        )

        def update(topic_device: str, **kw: object) -> tuple[str, bytes]:
            fields = {
                "round_id": req.round_id,
                "iteration": 0,
                "device_id": topic_device,
                "base_digest": held,
                "num_examples": 10,
                "train_loss": 0.1,
                "train_accuracy": 0.5,
                "blob": blob,
                **kw,
            }
            return f"fl/device/{topic_device}/update", encode(DeviceUpdate.model_validate(fields))

        bad = [
            update("intruder"),  # never selected
            (update(device)[0], update("someone-else")[1]),  # device id differs from topic
            update(device, blob=b"\x28\xb5\x2f\xfd junk"),  # not a payload
            update(device, num_examples=10**9),  # more examples than it has
            update(device, iteration=5),  # an iteration that is not open
        ]

        # Execute
        for topic, payload in bad:
            await probe.client.publish(topic, payload, qos=1)

        # Assert: five reasons, and nothing entered the running FedAvg
        await probe.wait_for("fl/errors/aggregator", len(bad), timeout=20)
        reasons = " | ".join(e.reason for e in _errors(probe, "aggregator"))
        for expected in (
            "was not selected",
            "does not match topic",
            "bad update payload",
            "exceeds",
            "not open",
        ):
            assert expected in reasons
        assert await saga.store.smembers(keys.contributors(req.round_id, 0)) == []
        # ...and the device whose topic carried the last four heard each reason
        agent = fleet.agent(device)
        async with asyncio.timeout(10):
            while len(agent.rejections) < len(bad) - 1:
                await asyncio.sleep(0.05)
        assert {r.topic for r in agent.rejections} == {f"fl/device/{device}/update"}
        assert all(r.service == "aggregator" for r in agent.rejections)
        result = await task
        assert result.status == "succeeded", result.failure_reason
        assert result.participation["participants_per_iteration"] == [10]
    finally:
        await fleet.__aexit__(None, None, None)


async def test_nan_update_mid_round_is_rejected_and_the_round_still_succeeds(
    saga: FedSaga, fleet: Fleet, probe: Probe
) -> None:
    # Prepare: a device of the fleet sends a NaN-laden update as soon as it is selected
    victim = fleet.agents[0]
    original = victim.train

    async def poisoned(cmd):  # type: ignore[no-untyped-def]
        if cmd.iteration == 0:
            held = victim.models.rounds[cmd.round_id]
            blob = _nan_payload(held.params, held.digest)
            await victim._publish(
                "fl/device/{device_id}/update",
                DeviceUpdate(
                    round_id=cmd.round_id,
                    iteration=0,
                    device_id=victim.device_id,
                    base_digest=held.digest,
                    num_examples=10,
                    train_loss=0.0,
                    train_accuracy=0.0,
                    blob=blob,
                ),
            )
        await original(cmd)

    victim.train = poisoned  # type: ignore[method-assign]

    # Execute
    result = await saga.run(request(), timeout=60)

    # Assert
    assert result.status == "succeeded"
    reasons = [e.reason for e in _errors(probe, "aggregator")]
    assert any("finite" in r.lower() or "nan" in r.lower() for r in reasons), reasons


async def test_a_redelivered_or_repeated_event_changes_nothing(
    saga: FedSaga, fleet: Fleet, probe: Probe
) -> None:
    # Prepare
    result = await saga.run(request(), timeout=60)
    validated = probe.on(f"fl/round/{result.round_id}/model_validated")[0]
    deploys_before = sum(b"cmd.deploy" in p for p in probe.on("/cmd"))
    log_before = await saga.store.events(result.round_id)
    state_before = await saga.store.get_round(result.round_id)

    # Execute: the same message again (at-least-once redelivery), then a copy with a new id
    await probe.client.publish(f"fl/round/{result.round_id}/model_validated", validated, qos=1)
    event = decode(validated, ModelValidated)
    copy = event.model_copy(update={"msg_id": "f" * 32})
    await probe.client.publish(f"fl/round/{result.round_id}/model_validated", encode(copy), qos=1)
    await probe.wait_for(f"fl/round/{result.round_id}/model_validated", 3)
    await asyncio.sleep(0.5)

    # Assert: no second deployment, no new events, same state
    assert sum(b"cmd.deploy" in p for p in probe.on("/cmd")) == deploys_before == 12
    assert await saga.store.events(result.round_id) == log_before
    assert await saga.store.get_round(result.round_id) == state_before


async def test_events_repeated_mid_round_neither_reset_nor_double_step_it(
    stack: LocalStack, saga: FedSaga, probe: Probe
) -> None:
    # Prepare: slow devices, so the round is still running when the copies arrive
    fleet = await start_fleet(stack, saga, slowdown_s=1.0)
    try:
        req = request(training_rounds=3, iteration_timeout_ms=30_000)
        task = asyncio.create_task(saga.run(req, timeout=90))
        rid = req.round_id
        await probe.wait_for(f"fl/round/{rid}/iteration_completed", timeout=30)
        selected = decode(probe.on(f"fl/round/{rid}/nodes_selected")[0], NodesSelected)
        closed = decode(probe.on(f"fl/round/{rid}/training_completed")[0], TrainingCompleted)
        start = (await saga.store.get_round(rid)).start_digest

        # Execute: copies with new ids (a producer's replay), and an exact redelivery
        for event in (selected, closed):
            copy = event.model_copy(update={"msg_id": "e" * 32})
            await probe.client.publish(f"fl/round/{rid}/{event.topic_name}", encode(copy), qos=1)
        await probe.client.publish(
            f"fl/round/{rid}/training_completed", probe.on(f"fl/round/{rid}/training_completed")[0]
        )
        result = await task

        # Assert: three iterations, each stepping once from the model the last one made
        assert result.status == "succeeded", result.failure_reason
        kinds = [e["kind"] for e in result.timeline]
        assert kinds.count("weights.distributed") == 3
        assert kinds.count("iteration.completed") == 2
        assert kinds.count("model.aggregated") == 1
        state = await saga.store.get_round(rid)
        assert state.start_digest == start == state.at(0).base
        stepped = [e for e in await saga.store.events(rid) if e["kind"] == "iteration.completed"]
        assert [state.at(1).base, state.at(2).base] == [e["global_digest"] for e in stepped]
    finally:
        await fleet.__aexit__(None, None, None)
