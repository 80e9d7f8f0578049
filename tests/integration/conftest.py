"""Fixtures: a real mosquitto and a real Redis on free ports, and the six services as OS
processes against them (one stack per test session), plus a fresh fleet per test."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest
import redis

from deploy.stack import LocalStack
from edge_client.fleet import Fleet, FleetSpec
from fedsaga.client import FedSaga
from fedsaga.status import RoundResult
from schemas import topics
from schemas.codec import decode
from schemas.device import DeviceUpdate
from schemas.mqtt import connect
from schemas.ops import RoundRequested
from services.runtime import keys

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
    async with FedSaga(stack.settings) as client:
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
    fleet = Fleet(full, s.mqtt_endpoint())
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


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll an async check until it holds (bounded)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


def request(**overrides: object) -> RoundRequested:
    """A small, fast round: 3 iterations over 10 devices, an easy target."""
    fields: dict[str, object] = {
        "round_id": f"t-{uuid.uuid4().hex[:10]}",
        "create_model": True,  # whichever test runs first creates the lineage
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
    async with mqtt_client(stack, "probe") as client:
        p = Probe(client)
        for topic in ("fl/errors/#", "fl/round/#", "fl/device/+/cmd"):
            await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for message in client.messages:
                p.messages.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]

        task = asyncio.create_task(read())
        yield p
        task.cancel()


def mqtt_client(stack: LocalStack, prefix: str) -> aiomqtt.Client:
    """A plain MQTT 5 client of the stack's broker, with a fresh id (`async with` it)."""
    return connect(stack.settings.mqtt_endpoint(), f"{prefix}-{uuid.uuid4().hex[:6]}")


@contextlib.asynccontextmanager
async def on_updates(
    stack: LocalStack, callback: Callable[[DeviceUpdate], None]
) -> AsyncIterator[None]:
    """Call `callback(update)` for each device update the broker routes, as it arrives.

    For faults timed to an update burst. It stops listening when the broker goes away.
    """
    async with mqtt_client(stack, "updates") as client:
        await client.subscribe(topics.ALL_UPDATES, qos=0)

        async def read() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                async for message in client.messages:
                    callback(decode(bytes(message.payload), DeviceUpdate))  # type: ignore[arg-type]

        task = asyncio.create_task(read())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def assert_each_update_counted_once(
    saga: FedSaga, req: RoundRequested, result: RoundResult
) -> None:
    """Every iteration folded in each cohort device's update exactly once: no failures,
    participants == cohort, and the aggregate's example count is the cohort's total."""
    rid = result.round_id
    cohort = set(await saga.store.smembers(keys.cohort(rid)))
    iterations = req.training_rounds
    assert len(cohort) == req.cohort_size
    assert result.participation["failures"] == {}
    assert result.participation["participants_per_iteration"] == [len(cohort)] * iterations
    examples = {}
    for device_id in cohort:
        device = await saga.store.device(device_id)
        assert device is not None
        examples[device_id] = device.num_examples
    total = sum(examples.values())
    events = await saga.store.events(rid)
    aggregated = {
        e.get("iteration", iterations - 1): e
        for e in events
        if e["kind"] in ("iteration.completed", "model.aggregated")
    }
    for it in range(iterations):
        assert await saga.store.contributors(rid, it) == cohort, f"iteration {it}"
        e = aggregated[it]
        assert (e["updates"], e["num_examples"]) == (len(cohort), total), f"iteration {it}"
    for it in range(iterations):
        # Each device's update is announced once per iteration, whatever died or restarted
        # (the announcement's msg_id is per device and iteration; the log keeps one per id).
        received = [e for e in events if e["kind"] == "update.received" and e["iteration"] == it]
        devices = [e["device_id"] for e in received]
        twice = [
            (e["id"], e["device_id"], e["msg_id"])
            for e in received
            if devices.count(e["device_id"]) > 1
        ]
        assert not twice, f"iteration {it}: announced twice in the round's log: {twice}"
        assert set(devices) == cohort, f"iteration {it}: announced {sorted(devices)}"
    announced = [e["num_examples"] for e in events if e["kind"] == "iteration.completed"]
    assert announced == [total] * (iterations - 1)


@pytest.fixture
async def burst_fleet(stack: LocalStack, saga: FedSaga) -> AsyncIterator[Fleet]:
    """Twenty healthy devices, for rounds whose updates arrive as a burst of twenty."""
    f = await start_fleet(stack, saga, devices=20)
    yield f
    await f.__aexit__(None, None, None)


class UpdateBurst:
    """Set `arrived` once the `nth` update of `iteration` reached the broker (the burst's
    middle, say): the moment to strike. Pass `seen` to `on_updates`."""

    def __init__(self, iteration: int, nth: int) -> None:
        self.iteration, self.nth = iteration, nth
        self.devices: set[str] = set()
        self.arrived = asyncio.Event()

    def seen(self, update: DeviceUpdate) -> None:
        """Count one update as it arrives."""
        if update.iteration == self.iteration:
            self.devices.add(update.device_id)
            if len(self.devices) >= self.nth:
                self.arrived.set()


FEDSAGA = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "fedsaga")


def cli_env(stack: LocalStack, **extra: str) -> dict[str, str]:
    """The environment of an operator's shell pointed at the test stack (and no profile)."""
    s = stack.settings
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEDSAGA_")}
    return {
        **base,
        "FEDSAGA_CONFIG": os.devnull,
        "FEDSAGA_MQTT_HOST": s.mqtt_host,
        "FEDSAGA_MQTT_PORT": str(s.mqtt_port),
        "FEDSAGA_REDIS_URL": s.redis_url,
        **extra,
    }


async def fedsaga(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `fedsaga ARGS` (in a thread: the fleet trains on this test's loop meanwhile)."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FEDSAGA, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return await asyncio.to_thread(run)
