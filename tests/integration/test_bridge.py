"""Past one broker: the services on the core broker, every device on a regional broker bridged
to it with mosquitto/regional.conf.

Both brokers run mosquitto/prod.conf (TLS, a password per client, the project's ACL); the
regional one also reads regional.conf, whose bridge logs in to the core as
`fedsaga-bridge-region1` through a TCP link the test can cut and whose bytes it counts. A tap on
each broker records what it routed, so the tests see what crossed in each direction: exactly
the device topics, each message once, the round's events never; and what a dropped link does.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from deploy.servers import (
    ACL_FILE,
    ROOT,
    ProdBroker,
    Server,
    find_binary,
    fit_files,
    free_port,
    prod_config,
    set_options,
    stay_user,
)
from deploy.stack import LocalStack
from edge_client.fleet import Fleet, FleetSpec
from fedsaga.client import OPS_USER, FedSaga
from schemas import topics
from schemas.asyncapi import channels
from schemas.codec import unpack
from schemas.mqtt import MqttEndpoint, connect
from services.runtime import keys
from services.runtime.settings import Settings
from tests.integration.conftest import assert_each_update_counted_once, eventually, request
from tests.integration.link import Link
from tests.integration.test_acl import acl_sections
from tests.integration.tls_helpers import Pki, make_pki, password_file

REGIONAL_CONF = ROOT / "mosquitto" / "regional.conf"
REGION = "region1"
BRIDGE_USER = f"fedsaga-bridge-{REGION}"
BRIDGE_STATE = f"fl/bridge/{REGION}/state"
TAP = "bridge-tap"  # the tests' own reader of everything a broker routes (its own ACL section)
FLEETS = {"reg": 10, "cut": 8}  # device-id prefix -> devices; one fleet per test
TO_DEVICES = ("cmd", "model", "rejected")
FROM_DEVICES = ("status", "update", "report")


def bridge_options(path: Path = REGIONAL_CONF) -> dict[str, str]:
    """regional.conf's options (the first value of each) and its topic lines."""
    options: dict[str, str] = {}
    for line in path.read_text().splitlines():
        option, _, value = line.partition(" ")
        if option and not option.startswith("#") and option != "topic":
            options.setdefault(option, value)
    return options


def bridge_topics(path: Path = REGIONAL_CONF) -> set[tuple[str, str, str]]:
    """regional.conf's `topic PATTERN DIRECTION QOS` lines."""
    lines = [line.split() for line in path.read_text().splitlines()]
    return {(line[1], line[2], line[3]) for line in lines if line[:1] == ["topic"]}


def regional_config(
    files: ProdBroker, port: int, data_dir: Path, core: int, bridge_password: str
) -> str:
    """mosquitto/prod.conf on 127.0.0.1:`port` for the region's devices, with regional.conf in
    the directory it reads, its bridge pointed at 127.0.0.1:`core` with our CA and password."""
    conf_d = data_dir.parent / "conf.d"
    conf_d.mkdir(exist_ok=True)
    bridge = set_options(
        REGIONAL_CONF.read_text(),
        {
            "address": f"127.0.0.1:{core}",
            "bridge_cafile": str(files.ca_file),
            "remote_password": bridge_password,
        },
    )
    (conf_d / "regional.conf").write_text(bridge)
    return prod_config(files, port, data_dir) + stay_user() + f"include_dir {conf_d}\n"


@dataclass(frozen=True)
class Seen:
    """One message a broker routed to the tap: when, where, what."""

    at: float
    topic: str
    payload: bytes

    @property
    def leaf(self) -> str:
        """`update` of fl/device/d/update."""
        return self.topic.rsplit("/", 1)[-1]

    @property
    def message(self) -> dict[str, Any]:
        """The fedsaga message (msgpack map)."""
        body: dict[str, Any] = unpack(self.payload)
        return body


@dataclass
class Tap:
    """Everything a broker routes live (retained copies of older messages left out)."""

    seen: list[Seen] = field(default_factory=list)

    def on(self, *leaves: str, round_id: str | None = None) -> list[Seen]:
        """Device messages of these kinds (of one round when given)."""
        found = [s for s in self.seen if s.topic.startswith("fl/device/") and s.leaf in leaves]
        if round_id is None:
            return found
        return [s for s in found if s.message.get("round_id") == round_id]

    def ids(self, *leaves: str) -> Counter[tuple[str, str]]:
        """How often each device message (topic, msg_id) of these kinds came by."""
        return Counter((s.topic, s.message["msg_id"]) for s in self.on(*leaves))


@dataclass(frozen=True)
class Bridged:
    """The core stack (services on prod.conf's broker), the regional broker, the link."""

    stack: LocalStack
    regional: Server
    link: Link
    pki: Pki
    passwords: dict[str, str]

    def endpoint(self, port: int, user: str) -> MqttEndpoint:
        """A broker's TLS listener as `user`."""
        base = MqttEndpoint(host="127.0.0.1", port=port, ca_file=str(self.pki.ca))
        return base.login(user, self.passwords[user])

    @property
    def ops(self) -> Settings:
        """The operator's settings: the core broker as fedsaga-ops."""
        return self.stack.settings.model_copy(update={"mqtt_password": self.passwords[OPS_USER]})

    @contextlib.asynccontextmanager
    async def tap(self, port: int) -> AsyncIterator[Tap]:
        """Record every fl/ message the broker on `port` routes from now on."""
        tap = Tap()
        async with connect(self.endpoint(port, TAP), TAP) as client:
            await client.subscribe("fl/#", qos=1)

            async def read() -> None:
                with contextlib.suppress(aiomqtt.MqttError):
                    async for m in client.messages:
                        if not m.retain:
                            tap.seen.append(Seen(time.monotonic(), m.topic.value, m.payload))

            task = asyncio.create_task(read())
            try:
                yield tap
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def fleet(self, prefix: str, **spec: Any) -> AsyncIterator[Fleet]:
        """A fleet on the regional broker only, each device with its password, registered by
        the services (its status crossed the bridge)."""
        settings = self.stack.settings
        full = FleetSpec(
            devices=FLEETS[prefix],
            prefix=prefix,
            low_battery_share=0.0,
            data_seed=settings.data_seed,
            holdout_fraction=settings.holdout_fraction,
            **spec,
        )
        ids = full.device_ids()
        region = MqttEndpoint(host="127.0.0.1", port=self.regional.port, ca_file=str(self.pki.ca))
        async with Fleet(full, region, passwords={d: self.passwords[d] for d in ids}) as f:
            async with FedSaga(self.ops) as saga:

                async def registered() -> bool:
                    return set(ids) <= {d.device_id for d in await saga.store.devices()}

                await eventually(registered)
            yield f


@pytest.fixture(scope="module")
async def bridged(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bridged]:
    """The six services on a core broker run from prod.conf; a regional broker from prod.conf
    and regional.conf, bridged to the core through a `Link`; both with the project's ACL plus a
    section for the tests' tap."""
    work = tmp_path_factory.mktemp("bridge")
    pki = make_pki(work / "certs", OPS_USER)
    acl = work / "fedsaga.acl"
    acl.write_text(ACL_FILE.read_text() + f"\nuser {TAP}\ntopic read fl/#\n")
    core_files = ProdBroker(pki.ca, pki.server.cert, pki.server.key, work / "core.passwd", acl)
    stack = LocalStack(work / "core", broker=core_files, canary_timeout_ms=5_000)
    identities = {name: stack.settings.service_identity(name) for name in stack.services}
    devices = [d for prefix, n in FLEETS.items() for d in FleetSpec(n, prefix=prefix).device_ids()]
    core_users = [*identities.values(), OPS_USER, BRIDGE_USER, TAP]
    passwords = {u: secrets.token_urlsafe(12) for u in [*core_users, *devices]}
    password_file(core_files.password_file, {u: passwords[u] for u in core_users})
    region_files = ProdBroker(pki.ca, pki.server.cert, pki.server.key, work / "region.passwd", acl)
    password_file(region_files.password_file, {u: passwords[u] for u in [*devices, TAP]})
    for name, proc in stack.services.items():
        proc.settings = stack.settings.model_copy(
            update={"mqtt_password": passwords[identities[name]]}
        )
    with stack:
        async with Link(stack.servers.broker.port) as link:
            port = free_port()
            data = work / "region" / "mosquitto-data"
            data.mkdir(parents=True)
            conf = work / "region" / "mosquitto.conf"
            text, files = fit_files(
                regional_config(region_files, port, data, link.port, passwords[BRIDGE_USER]),
                len(devices),
            )
            conf.write_text(text)
            argv = [find_binary("mosquitto"), "-c", str(conf)]
            regional = Server("regional", port, work / "region", argv, open_files=files).start()
            try:
                bridged = Bridged(stack, regional, link, pki, passwords)
                await bridge_up(bridged)
                yield bridged
            finally:
                # In a thread: the link must keep forwarding while the bridge says goodbye
                # (with the loop blocked, mosquitto waited out stop()'s 10 s for it).
                await asyncio.to_thread(regional.stop)


async def bridge_up(bridged: Bridged, timeout: float = 15.0) -> None:
    """Wait until the core broker holds the bridge's state as connected (retained `1`)."""
    endpoint = bridged.endpoint(bridged.stack.servers.broker.port, TAP)
    async with connect(endpoint, TAP) as client, asyncio.timeout(timeout):
        await client.subscribe(BRIDGE_STATE, qos=1)
        async for message in client.messages:
            if message.payload == b"1":
                return


def test_the_bridge_carries_the_device_topics_each_way_and_nothing_else() -> None:
    # Prepare: the contract's device channels (docs/device-protocol.md, section 2); a channel a
    # device publishes on goes out to the core, one it subscribes to comes in
    expected = set()
    for channel in channels():
        pattern = channel.address.replace("{device_id}", "+")
        if "device" in channel.publishers:
            expected.add((pattern, "out", "1"))
        elif "device" in channel.subscribers:
            expected.add((pattern, "in", "1"))

    # Execute
    carried = bridge_topics()

    # Assert: those topics at QoS 1, each in its one direction
    assert carried == expected
    assert {p.rsplit("/", 1)[1] for p, d, _ in carried if d == "in"} == set(TO_DEVICES)
    assert {p.rsplit("/", 1)[1] for p, d, _ in carried if d == "out"} == set(FROM_DEVICES)


def test_the_core_acl_lets_the_bridge_carry_its_topics_and_no_more() -> None:
    # Prepare
    options = bridge_options()
    rights = acl_sections()[BRIDGE_USER]

    # Execute: what the bridge needs on the core: read what comes in, write what goes out,
    # and its own presence (its will)
    needed = [f"read {p}" for p, d, _ in sorted(bridge_topics()) if d == "in"]
    needed += [f"write {p}" for p, d, _ in sorted(bridge_topics()) if d == "out"]
    needed.append(f"write {options['notification_topic']}")

    # Assert: one user for the region, as client id, username and in its state topic
    assert options["remote_username"] == options["remote_clientid"] == BRIDGE_USER
    assert options["notification_topic"] == BRIDGE_STATE
    assert sorted(rights) == sorted(needed)


def crossings(tap: Tap, round_id: str) -> dict[tuple[Any, ...], list[str]]:
    """Each distinct model payload of a round that reached the regional broker: the devices it
    went to, once per crossing. Key: purpose, iteration, base digest, digest, blob bytes."""
    out: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for seen in tap.on("model", round_id=round_id):
        m = seen.message
        key = (m["purpose"], m["iteration"], m["base_digest"], m["digest"], len(m["blob"]))
        out[key].append(topics.device_of(seen.topic))
    return out


def table(payloads: dict[tuple[Any, ...], list[str]], devices: int) -> str:
    """The crossings as a table (shown with `pytest -s`)."""
    rows = [f"model payloads across the bridge, {devices} devices behind it:"]
    rows.append("purpose iteration base     digest   bytes   crossings  bytes across")
    for (purpose, it, base, digest, size), to in sorted(payloads.items(), key=str):
        b = (base or "(full)")[:8]
        rows.append(
            f"{purpose:7} {it:9} {b:8} {digest[:8]} {size:7} {len(to):9} {size * len(to):13}"
        )
    return "\n".join(rows)


def offline(seen: Seen) -> bool:
    """A device's status saying it left."""
    return bool(seen.message["state"] == "offline")


def device_topics_only(tap: Tap, devices: Iterable[str]) -> set[str]:
    """Topics the tap saw that are neither a device topic of `devices` nor the bridge state."""
    ids = set(devices)
    return {
        s.topic
        for s in tap.seen
        if s.topic != BRIDGE_STATE
        and not (s.topic.startswith("fl/device/") and topics.device_of(s.topic) in ids)
    }


async def test_a_round_runs_with_every_device_behind_the_bridge(bridged: Bridged) -> None:
    # Prepare: taps on both brokers, then ten devices on the regional broker only
    core_port, region_port = bridged.stack.servers.broker.port, bridged.regional.port
    req = request(training_rounds=3, cohort_size=FLEETS["reg"], iteration_timeout_ms=20_000)
    down, up = bridged.link.down_bytes, bridged.link.up_bytes
    async with bridged.tap(core_port) as core, bridged.tap(region_port) as region:
        async with bridged.fleet("reg") as fleet, FedSaga(bridged.ops) as saga:
            ids = [a.device_id for a in fleet.agents]

            # Execute
            result = await saga.run(req, timeout=60)
            cohort = set(await saga.store.smembers(keys.cohort(req.round_id)))

        # the last reports, and the statuses of devices leaving, may still be on their way
        async def settled() -> bool:
            left = {topics.device_of(s.topic) for s in core.on("status") if offline(s)}
            return left == set(ids) and core.ids(*FROM_DEVICES) == region.ids(*FROM_DEVICES)

        await eventually(settled)
        inbound = (core.ids(*TO_DEVICES), region.ids(*TO_DEVICES))
        outbound = (core.ids(*FROM_DEVICES), region.ids(*FROM_DEVICES))

    # Assert: the round succeeded and every device serves its model, all through the bridge
    assert result.succeeded, result.failure_reason
    assert result.participation["participants_per_iteration"] == [len(ids)] * 3
    assert cohort == set(ids)
    deployed = {a.models.current.version if a.models.current else None for a in fleet.agents}
    assert deployed == {result.versions["deployed"]}
    # what crossed in: the services' messages to the devices, each once; none of the round's
    # events, which the core carried all along
    assert device_topics_only(region, ids) == set()
    assert any(s.topic.startswith(f"fl/round/{req.round_id}/") for s in core.seen)
    assert inbound[0] == inbound[1]
    assert set(inbound[1].values()) == {1}
    # what crossed out: the devices' messages, each once (nothing of what came in went back)
    assert outbound[0] == outbound[1]
    assert set(outbound[0].values()) == {1}
    updates = Counter(
        (s.message["device_id"], s.message["iteration"])
        for s in core.on("update", round_id=req.round_id)
    )
    assert updates == Counter({(d, it): 1 for d in ids for it in range(3)})
    # each distinct model payload crossed once per device it was addressed to, today: three
    # train payloads (one per iteration, every device holding the same base) and the deploy
    payloads = crossings(region, req.round_id)
    print("\n" + table(payloads, len(ids)))
    assert Counter(purpose for purpose, *_ in payloads) == {"train": 3, "deploy": 1}
    for key, to in payloads.items():
        assert sorted(to) == sorted(ids), key
    # and the link carried at least those bytes down, and every update's up
    model_bytes = sum(key[-1] * len(to) for key, to in payloads.items())
    update_bytes = sum(len(s.message["blob"]) for s in core.on("update", round_id=req.round_id))
    assert bridged.link.down_bytes - down >= model_bytes
    assert bridged.link.up_bytes - up >= update_bytes
    print(
        f"link: {bridged.link.down_bytes - down} B down (model blobs {model_bytes}),"
        f" {bridged.link.up_bytes - up} B up (update blobs {update_bytes})"
    )


async def until(check: Any, timeout: float = 20.0) -> None:
    """Wait (bounded) until a plain check holds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def arrivals(tap: Tap, seen: list[Seen]) -> list[float]:
    """When each of `seen` (from the other broker's tap) first came by on this tap's broker."""
    first: dict[tuple[str, str], float] = {}
    for s in tap.seen:
        if s.topic.startswith("fl/device/"):
            first.setdefault((s.topic, s.message["msg_id"]), s.at)
    return [first.get((s.topic, s.message["msg_id"]), float("inf")) for s in seen]


async def test_a_round_goes_on_when_the_link_to_the_core_drops(bridged: Bridged) -> None:
    # Prepare: eight devices on the regional broker that take half a second to train
    link = bridged.link
    core_port, region_port = bridged.stack.servers.broker.port, bridged.regional.port
    req = request(training_rounds=2, cohort_size=FLEETS["cut"], iteration_timeout_ms=30_000)
    rid, connections = req.round_id, link.connections

    def train_commands(tap: Tap, iteration: int) -> list[Seen]:
        return [
            s
            for s in tap.on("cmd", round_id=rid)
            if s.message["kind"] == "cmd.train" and s.message["iteration"] == iteration
        ]

    async with bridged.tap(core_port) as core, bridged.tap(region_port) as region:
        async with bridged.fleet("cut", slowdown_s=0.5) as fleet, FedSaga(bridged.ops) as saga:
            ids = [a.device_id for a in fleet.agents]

            # Execute: the link drops before the round starts, so the core routes iteration 0's
            # payloads and commands to the region while it is down ...
            link.cut()
            cut = time.monotonic()
            running = asyncio.create_task(saga.run(req, timeout=90))
            await until(lambda: len(train_commands(core, 0)) == len(ids))
            await asyncio.sleep(0.5)
            restored = time.monotonic()
            await link.restore()
            # ... and again once the devices have iteration 1's commands, so every update of
            # that iteration is made in the region while it is down
            await until(lambda: len(train_commands(region, 1)) == len(ids))
            link.cut()
            cut_again = time.monotonic()
            await asyncio.sleep(1.5)
            restored_again = time.monotonic()
            await link.restore()
            result = await running
            done = time.monotonic()
            await assert_each_update_counted_once(saga, req, result)

        # Every reconnect also replays the region's retained statuses (its local subscription
        # is made again), so the core sees more than the devices sent, never less.
        async def settled() -> bool:
            return set(region.ids(*FROM_DEVICES)) <= set(core.ids(*FROM_DEVICES))

        await eventually(settled)
        inbound = (set(core.ids(*TO_DEVICES)), set(region.ids(*TO_DEVICES)))

    # Assert: the round succeeded, each update counted once (above)
    assert result.succeeded, result.failure_reason
    assert link.connections == connections + 2  # the bridge came back after each cut, by itself
    replayed = core.ids("status") - region.ids("status")
    assert replayed, "no retained status replayed on reconnect"
    # what the services sent while the link was down waited on the core, in the bridge's
    # session, and reached the region once it was back; all of it crossed (at least once: what
    # was in flight when the link dropped crosses again, and devices handle it once)
    queued_on_core = [s for s in core.on(*TO_DEVICES, round_id=rid) if cut <= s.at < restored]
    assert len(queued_on_core) >= 2 * len(ids)  # a payload and a train command each
    assert all(restored < at < float("inf") for at in arrivals(region, queued_on_core))
    assert inbound[0] == inbound[1]
    # what the devices sent while it was down waited on the regional broker, then crossed
    queued_in_region = [
        s for s in region.on("update", round_id=rid) if cut_again <= s.at < restored_again
    ]
    assert sorted(s.message["device_id"] for s in queued_in_region) == sorted(ids)
    assert all(restored_again < at < float("inf") for at in arrivals(core, queued_in_region))
    # the core told its subscribers each time the bridge went (its will) and came back
    states = [s.payload for s in core.seen if s.topic == BRIDGE_STATE]
    assert states == [b"0", b"1", b"0", b"1"]
    # and to the services no device behind the bridge ever looked offline: they stayed online
    # on the regional broker, whose link, not they, went away
    went = [s for s in core.on("status") if offline(s) and s.at < done]
    assert not [s.topic for s in went if topics.device_of(s.topic) in ids]
