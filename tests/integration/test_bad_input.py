"""Bad input is rejected with a reason on fl/errors/{service}; nothing else changes."""

from __future__ import annotations

import msgpack
import numpy as np
import zstandard

from edge_client.fleet import Fleet
from federated.model import init_mlp
from federated.payload import make_payload
from fedsaga.client import FedSaga
from schemas.codec import decode, encode
from schemas.device import DeviceUpdate
from schemas.events import ErrorReport, ModelValidated
from tests.integration.conftest import Probe, request


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


async def test_updates_from_unselected_devices_or_with_bad_weights_are_rejected(
    saga: FedSaga, fleet: Fleet, probe: Probe
) -> None:
    # Prepare: a finished round, so its state is fixed
    result = await saga.run(request(), timeout=60)
    before = await saga.store.get_round(result.round_id)
    params = init_mlp((64, 32, 10), np.random.default_rng(0))
    blob, _ = make_payload(params, None, rng=np.random.default_rng(0))

    def update(device: str, **kw: object) -> bytes:
        fields = {
            "round_id": result.round_id,
            "iteration": 0,
            "device_id": device,
            "base_digest": "0" * 64,
            "num_examples": 10,
            "train_loss": 0.1,
            "train_accuracy": 0.5,
            "blob": blob,
            **kw,
        }
        return encode(DeviceUpdate.model_validate(fields))

    # Execute
    await probe.client.publish("fl/device/intruder/update", update("intruder"), qos=1)
    await probe.client.publish("fl/device/intruder/update", update("someone-else"), qos=1)
    await probe.client.publish(
        "fl/device/t0-0001/update", update("t0-0001", blob=b"\x28\xb5\x2f\xfd junk"), qos=1
    )

    # Assert
    await probe.wait_for("fl/errors/aggregator", 3)
    reasons = [e.reason for e in _errors(probe, "aggregator")]
    assert any("does not match topic" in r for r in reasons)
    assert sum("is succeeded" in r or "not selected" in r for r in reasons) >= 1
    after = await saga.store.get_round(result.round_id)
    assert {k: v for k, v in after.items() if k != "updated_ms"} == {
        k: v for k, v in before.items() if k != "updated_ms"
    }


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
    import asyncio

    await asyncio.sleep(0.5)

    # Assert: no second deployment, no new events, same state
    assert sum(b"cmd.deploy" in p for p in probe.on("/cmd")) == deploys_before == 12
    assert await saga.store.events(result.round_id) == log_before
    assert await saga.store.get_round(result.round_id) == state_before
