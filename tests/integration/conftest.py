"""Fixtures: a real mosquitto and a real Redis on free ports, and the six services as OS
processes against them (one stack per test session), plus a fresh fleet per test."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from deploy.stack import LocalStack
from edge_client.fleet import Fleet, FleetSpec
from fedsaga.client import FedSaga
from schemas.ops import RoundRequested

_fleet_ids = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration talks to real servers."""
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """mosquitto + redis-server (private, free ports) and the six services as processes."""
    with LocalStack(canary_timeout_ms=5_000) as s:
        yield s


@pytest.fixture
def clean_redis(stack: LocalStack) -> None:
    """Each test starts with an empty Redis (the services keep nothing in memory)."""
    redis.Redis.from_url(stack.settings.redis_url).flushdb()


@pytest.fixture
async def saga(stack: LocalStack, clean_redis: None) -> AsyncIterator[FedSaga]:
    """The ops client: start rounds, await results, watch events."""
    s = stack.settings
    async with FedSaga(
        mqtt_host=s.mqtt_host, mqtt_port=s.mqtt_port, redis_url=s.redis_url
    ) as client:
        yield client


async def start_fleet(stack: LocalStack, saga: FedSaga, **spec: object) -> Fleet:
    """A fleet with fresh device ids, every device registered before returning."""
    s = stack.settings
    full = FleetSpec(
        **{
            "devices": 12,
            "prefix": f"t{next(_fleet_ids)}",
            "low_battery_share": 0.0,
            "data_seed": s.data_seed,
            "holdout_fraction": s.holdout_fraction,
            **spec,
        }
    )  # type: ignore[arg-type]
    fleet = Fleet(full, host=s.mqtt_host, port=s.mqtt_port)
    await fleet.__aenter__()
    ids = {a.device_id for a in fleet.agents}
    async with asyncio.timeout(10):
        while not ids <= {d.device_id for d in await saga.store.devices()}:
            await asyncio.sleep(0.05)
    return fleet


@pytest.fixture
async def fleet(stack: LocalStack, saga: FedSaga) -> AsyncIterator[Fleet]:
    """Twelve simulated devices, all healthy, all plugged in or charged enough."""
    f = await start_fleet(stack, saga)
    yield f
    await f.__aexit__(None, None, None)


def request(**overrides: object) -> RoundRequested:
    """A small, fast round: 3 iterations over 10 devices, an easy target."""
    fields: dict[str, object] = {
        "round_id": f"t-{uuid.uuid4().hex[:10]}",
        "target_accuracy": 0.5,
        "min_participating_nodes": 3,
        "training_rounds": 3,
        "cohort_size": 10,
        "local_epochs": 2,
        "batch_size": 16,
        "learning_rate": 0.1,
        "iteration_timeout_ms": 5_000,
    }
    fields.update(overrides)
    return RoundRequested.model_validate(fields)


class Probe:
    """A plain MQTT client that records what arrives on some topics, and can publish."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.messages: list[tuple[str, bytes]] = []

    def on(self, fragment: str) -> list[bytes]:
        """Payloads received on topics containing `fragment`."""
        return [p for t, p in self.messages if fragment in t]

    async def wait_for(self, fragment: str, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        """Wait until `count` messages arrived on topics containing `fragment`."""
        async with asyncio.timeout(timeout):
            while len(self.on(fragment)) < count:
                await asyncio.sleep(0.02)
        return self.on(fragment)


@pytest.fixture
async def probe(stack: LocalStack) -> AsyncIterator[Probe]:
    """Records fl/errors/#, saga events and device commands."""
    import aiomqtt

    s = stack.settings
    async with aiomqtt.Client(
        s.mqtt_host,
        s.mqtt_port,
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier=f"probe-{uuid.uuid4().hex[:6]}",
    ) as client:
        p = Probe(client)
        for topic in ("fl/errors/#", "fl/round/#", "fl/device/+/cmd"):
            await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for message in client.messages:
                p.messages.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]

        task = asyncio.create_task(read())
        yield p
        task.cancel()
