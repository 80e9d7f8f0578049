"""mosquitto/fedsaga.acl on a real, password-protected mosquitto: devices stay in their lane."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from deploy.servers import ROOT, Server, find_binary, free_port, stay_user
from edge_client.agent import DeviceAgent

PASSWORD = "s3cret"
USERS = ("fedsaga-svc", "dev-a", "dev-b")


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A mosquitto with passwords and the project's ACL, no anonymous access."""
    work = tmp_path_factory.mktemp("acl")
    passwd = work / "passwd"
    for i, user in enumerate(USERS):
        flags = ["-c"] if i == 0 else []
        subprocess.run(
            [find_binary("mosquitto_passwd"), *flags, "-b", str(passwd), user, PASSWORD], check=True
        )
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {ROOT / 'mosquitto' / 'fedsaga.acl'}\n" + stay_user()
    )
    server = Server("mosquitto-acl", port, Path(work), [find_binary("mosquitto"), "-c", str(conf)])
    server.start()
    yield port
    server.stop()


@contextlib.asynccontextmanager
async def connect(port: int, user: str) -> AsyncIterator[aiomqtt.Client]:
    """An MQTT v5 client logged in as `user`."""
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=user,
        username=user,
        password=PASSWORD,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as c:
        yield c


async def collect(client: aiomqtt.Client, into: list[str]) -> None:
    """Record the topic of everything the client receives."""
    async for message in client.messages:
        into.append(message.topic.value)


async def test_devices_cannot_read_others_updates_or_forge_events(secured_broker: int) -> None:
    # Prepare: the service sees fl/#, dev-b tries to see every device's updates
    seen_by_service: list[str] = []
    seen_by_b: list[str] = []
    async with (
        connect(secured_broker, "fedsaga-svc") as svc,
        connect(secured_broker, "dev-a") as a,
        connect(secured_broker, "dev-b") as b,
    ):
        await svc.subscribe("fl/#", qos=1)
        await b.subscribe("fl/device/+/update", qos=1)
        await b.subscribe("fl/round/#", qos=1)
        readers = [
            asyncio.create_task(collect(svc, seen_by_service)),
            asyncio.create_task(collect(b, seen_by_b)),
        ]

        # Execute
        await a.publish("fl/device/dev-a/update", b"a's delta", qos=1)  # allowed
        await b.publish("fl/device/dev-a/update", b"impersonation", qos=1)  # not b's topic
        await b.publish("fl/round/r1/failed", b"forged saga event", qos=1)  # not a service
        await svc.publish("fl/round/r1/nodes_selected", b"real event", qos=1)
        await asyncio.sleep(1.0)
        for task in readers:
            task.cancel()

    # Assert
    assert seen_by_service.count("fl/device/dev-a/update") == 1  # only a's own
    assert "fl/round/r1/failed" not in seen_by_service
    assert "fl/round/r1/nodes_selected" in seen_by_service
    assert seen_by_b == []  # neither a's update nor the saga's events


async def test_anonymous_and_wrong_password_are_refused(secured_broker: int) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", secured_broker, protocol=aiomqtt.ProtocolVersion.V5):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1",
            secured_broker,
            username="dev-a",
            password="nope",
            protocol=aiomqtt.ProtocolVersion.V5,
        ):
            pass


async def test_an_agent_with_a_password_logs_in_as_its_device_id(secured_broker: int) -> None:
    # Prepare
    agent = DeviceAgent(
        "dev-a",
        np.zeros((4, 64), np.float32),
        np.zeros(4, np.int64),
        host="127.0.0.1",
        port=secured_broker,
        password=PASSWORD,
    )
    statuses: list[str] = []
    async with connect(secured_broker, "fedsaga-svc") as svc:
        await svc.subscribe("fl/device/+/status", qos=1)
        reader = asyncio.create_task(collect(svc, statuses))

        # Execute
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.connected.wait(), 10)
        await asyncio.sleep(0.3)
        task.cancel()
        reader.cancel()

    # Assert: its retained status got through the ACL
    assert "fl/device/dev-a/status" in statuses
