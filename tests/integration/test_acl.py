"""prod.conf's login rules and mosquitto/fedsaga.acl on a real, password-protected mosquitto:
devices stay in their lane, and no client takes over another's session."""

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
from schemas.mqtt import MqttEndpoint
from services.runtime.app import Service
from services.runtime.connection import ack, service_client
from services.runtime.main import SERVICES
from services.runtime.settings import Settings

PASSWORD = "s3cret"
PROD_CONF = ROOT / "mosquitto" / "prod.conf"
ACL = ROOT / "mosquitto" / "fedsaga.acl"


def identity(name: str, instance: str = "0") -> str:
    """A service instance's client id, and on the production broker its username."""
    return Service(name, routes=()).identity(Settings(instance=instance))


USERS = (*(identity(name) for name in SERVICES), "dev-a", "dev-b")


def prod_lines(section: str) -> list[str]:
    """prod.conf's settings that decide who may connect as whom, from above its `listener`
    line (`global`) or below it (`listener`); its TLS, paths and persistence stay out."""
    keys = {
        "global": {"per_listener_settings", "allow_anonymous"},
        "listener": {"use_username_as_clientid"},
    }[section]
    lines = [line.strip() for line in PROD_CONF.read_text().splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    part = lines[:start] if section == "global" else lines[start + 1 :]
    return [line for line in part if line.split(" ", 1)[0] in keys]


def acl_sections() -> dict[str, list[str]]:
    """fedsaga.acl's `user` sections: username -> its `topic` rules."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in ACL.read_text().splitlines():
        kind, _, rest = raw.strip().partition(" ")
        if kind == "user":
            current = sections.setdefault(rest.strip(), [])
        elif kind == "topic":
            assert current is not None, f"a topic rule outside any user section: {raw}"
            current.append(rest.strip())
    return sections


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A mosquitto with prod.conf's login rules, passwords and the project's ACL."""
    work = tmp_path_factory.mktemp("acl")
    passwd = work / "passwd"
    for i, user in enumerate(USERS):
        flags = ["-c"] if i == 0 else []
        subprocess.run(
            [find_binary("mosquitto_passwd"), *flags, "-b", str(passwd), user, PASSWORD], check=True
        )
    port = free_port()
    conf = work / "mosquitto.conf"
    lines = [
        *prod_lines("global"),
        f"password_file {passwd}",
        f"acl_file {ACL}",
        f"listener {port} 127.0.0.1",
        *prod_lines("listener"),
    ]
    conf.write_text("\n".join(lines) + "\n" + stay_user())
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


@contextlib.asynccontextmanager
async def service_session(port: int, name: str) -> AsyncIterator[aiomqtt.Client]:
    """Instance 0 of service `name`, connected as the runtime connects it: a password, no
    username. (Its session ends with the connection, so tests leave each other nothing.)"""
    settings = Settings(mqtt_port=port, mqtt_password=PASSWORD, session_expiry_s=0)
    async with service_client(settings, identity(name)) as client:
        yield client


async def collect(client: aiomqtt.Client, into: list[str]) -> None:
    """Record the topic of everything the client receives (acknowledged, for a service)."""
    async for message in client.messages:
        into.append(message.topic.value)
        ack(client, message)


def test_prod_conf_makes_every_client_id_the_username() -> None:
    # A listener option: above the listener line it would configure a second, default one.
    assert prod_lines("listener") == ["use_username_as_clientid true"]
    assert "allow_anonymous false" in prod_lines("global")


def test_the_acl_has_a_section_for_each_service_instance() -> None:
    # Prepare
    sections = acl_sections()

    # Execute
    services = {
        user: topics
        for user, topics in sections.items()
        if user != "fedsaga-ops" and not user.startswith("fedsaga-bridge-")
    }

    # Assert: instance 0 of every service (and any extra instance of a known service) reads
    # and writes fl/#, and there is no other user section, such as a shared service user (a
    # regional bridge's section is checked in test_bridge.py)
    assert {identity(name) for name in SERVICES} <= set(services)
    for user, topics in services.items():
        name, _, instance = user.removeprefix("fedsaga-").rpartition("-")
        assert name in SERVICES, user
        assert instance.isdigit(), user
        assert user == identity(name, instance), user
        assert topics == ["readwrite fl/#"], user


async def test_devices_cannot_read_others_updates_or_forge_events(secured_broker: int) -> None:
    # Prepare: the service sees fl/#, dev-b tries to see every device's updates
    seen_by_service: list[str] = []
    seen_by_b: list[str] = []
    async with (
        service_session(secured_broker, "aggregator") as svc,
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


def test_a_device_reads_and_writes_only_its_own_topics() -> None:
    # Prepare
    lines = [line.split() for line in ACL.read_text().splitlines()]

    # Execute
    rights = {(line[1], line[2]) for line in lines if line[:1] == ["pattern"]}

    # Assert: what docs/device-protocol.md (section 1) promises a device, and nothing more
    assert rights == {
        ("read", "fl/device/%u/cmd"),
        ("read", "fl/device/%u/model"),
        ("read", "fl/device/%u/rejected"),
        ("write", "fl/device/%u/status"),
        ("write", "fl/device/%u/update"),
        ("write", "fl/device/%u/report"),
    }


async def test_a_device_reads_why_its_own_messages_were_refused(secured_broker: int) -> None:
    # Prepare: dev-a asks for every device's refusals
    seen_by_a: list[str] = []
    async with (
        service_session(secured_broker, "aggregator") as svc,
        connect(secured_broker, "dev-a") as a,
        connect(secured_broker, "dev-b") as b,
    ):
        await a.subscribe("fl/device/+/rejected", qos=1)
        reader = asyncio.create_task(collect(a, seen_by_a))

        # Execute
        await svc.publish("fl/device/dev-a/rejected", b"a's reason", qos=1)
        await svc.publish("fl/device/dev-b/rejected", b"b's reason", qos=1)
        await b.publish("fl/device/dev-a/rejected", b"forged", qos=1)  # not b's to write
        await asyncio.sleep(1.0)
        reader.cancel()

    # Assert: its own, once (from the service); not b's, and not b's forgery
    assert seen_by_a == ["fl/device/dev-a/rejected"]


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
        endpoint=MqttEndpoint(port=secured_broker),
        password=PASSWORD,
    )
    statuses: list[str] = []
    async with service_session(secured_broker, "selector") as svc:
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


async def test_a_device_asking_for_a_service_client_id_does_not_take_its_session(
    secured_broker: int,
) -> None:
    # Prepare: the aggregator's session, receiving the saga's events and dev-b's status
    seen_by_service: list[str] = []
    seen_by_device: list[str] = []
    async with (
        service_session(secured_broker, "aggregator") as svc,
        service_session(secured_broker, "selector") as selector,
    ):
        await svc.subscribe("fl/round/#", qos=1)
        await svc.subscribe("fl/device/dev-b/status", qos=1)
        reader = asyncio.create_task(collect(svc, seen_by_service))
        await selector.publish("fl/round/r1/before", b"", qos=1)

        # Execute: dev-b logs in as itself but asks for the aggregator's client id, and to
        # resume its session
        async with aiomqtt.Client(
            "127.0.0.1",
            secured_broker,
            identifier=identity("aggregator"),
            username="dev-b",
            password=PASSWORD,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
        ) as device:
            device_reader = asyncio.create_task(collect(device, seen_by_device))
            await device.publish("fl/device/dev-b/status", b"online", qos=1)
            await selector.publish("fl/round/r1/during", b"", qos=1)
            await asyncio.sleep(0.5)
            device_reader.cancel()
        await selector.publish("fl/round/r1/after", b"", qos=1)
        await asyncio.sleep(0.5)

        # Assert: the service was never disconnected (its message loop would have raised)
        assert not reader.done()
        assert svc._client.is_connected()
        reader.cancel()

    # Assert: it kept receiving; the device got a session of its own (its status went through
    # under its own name) and nothing from the aggregator's subscriptions
    assert seen_by_service == [
        "fl/round/r1/before",
        "fl/device/dev-b/status",
        "fl/round/r1/during",
        "fl/round/r1/after",
    ]
    assert seen_by_device == []


@pytest.mark.parametrize("name", SERVICES)
async def test_a_service_instance_reads_and_writes_fl_as_its_identity(
    secured_broker: int, name: str
) -> None:
    # Prepare
    seen_by_service: list[str] = []
    seen_by_device: list[str] = []
    async with service_session(secured_broker, name) as svc, connect(secured_broker, "dev-a") as a:
        await svc.subscribe("fl/#", qos=1)
        await a.subscribe("fl/device/dev-a/cmd", qos=1)
        readers = [
            asyncio.create_task(collect(svc, seen_by_service)),
            asyncio.create_task(collect(a, seen_by_device)),
        ]

        # Execute
        await svc.publish(f"fl/round/{name}/probe", b"", qos=1)
        await svc.publish("fl/device/dev-a/cmd", b"train", qos=1)
        await a.publish("fl/device/dev-a/update", b"delta", qos=1)
        await asyncio.sleep(0.5)
        for task in readers:
            task.cancel()

    # Assert: its own event, its command to the device and the device's update (plus any
    # retained status an earlier test left)
    assert {f"fl/round/{name}/probe", "fl/device/dev-a/cmd", "fl/device/dev-a/update"} <= set(
        seen_by_service
    )
    assert seen_by_device == ["fl/device/dev-a/cmd"]
