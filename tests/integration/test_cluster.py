"""A whole round on a Redis Cluster of three masters started on loopback.

Every script and MULTI of the store must keep its keys in one hash slot (`keys.py`): a
round's keys by their `{round_id}` tag, the device registry by `{devices}`, a service's
journals and dead letters by `{service}`. A key of another slot in any of them fails the
round here with CROSSSLOT; a single Redis would never notice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from deploy.servers import PrivateCluster, free_port
from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from schemas.base import now_ms
from schemas.device import DeviceStatus
from services.runtime import keys
from services.runtime.store import InFlight, SagaStore
from tests.integration.conftest import cli_env, fedsaga, request, start_fleet

SERVICES = ("selector", "distributor", "trainer_coordinator", "aggregator", "validator")


@pytest.fixture(scope="module")
def cluster_stack() -> Iterator[LocalStack]:
    """mosquitto, a Redis Cluster of three masters and the six services against it."""
    with LocalStack(redis_masters=3, canary_timeout_ms=5_000) as s:
        yield s


@pytest.fixture
async def cluster_saga(cluster_stack: LocalStack) -> AsyncIterator[FedSaga]:
    """The Python client, its Redis the cluster."""
    async with FedSaga(cluster_stack.settings) as client:
        yield client


def keys_by_master(cluster: PrivateCluster) -> dict[int, set[str]]:
    """Each master's keys (KEYS on one node lists that node's keys only), by its port."""
    found = {}
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            found[node.port] = {k.decode() for k in client.keys("fedsaga:*")}
    return found


async def test_a_round_runs_on_a_redis_cluster_and_its_keys_spread_over_the_masters(
    cluster_stack: LocalStack, cluster_saga: FedSaga
) -> None:
    # Prepare: six devices, a round of two iterations over all of them
    cluster = cluster_stack.servers.redis
    assert isinstance(cluster, PrivateCluster)
    assert cluster_stack.settings.redis_url.startswith("redis+cluster://127.0.0.1:")
    fleet: Fleet = await start_fleet(cluster_stack, cluster_saga, devices=6)
    req = request(training_rounds=2, cohort_size=6)

    # Execute: the round through the Python client; then the CLI reads it back
    try:
        result = await cluster_saga.run(req, timeout=60)
    finally:
        await fleet.__aexit__(None, None, None)
    env = cli_env(cluster_stack)
    listed = await fedsaga("round", "list", "--json", env=env)
    models = await fedsaga("models", "--json", env=env)

    # Assert: the whole saga ran, selection to deployment, and nothing was dead-lettered
    assert result.status == "succeeded", result.failure_reason
    assert result.steps_done == [*SERVICES, "deployer"]
    assert result.participation["participants_per_iteration"] == [6, 6]
    assert result.versions["deployed"] == result.versions["active"]
    for service in (*SERVICES, "deployer"):
        assert await cluster_saga.store.dead_letters(service) == [], service
    # the CLI reads the same cluster
    assert listed.returncode == 0, listed.stderr
    assert [(r["round_id"], r["status"]) for r in json.loads(listed.stdout)] == [
        (req.round_id, "succeeded")
    ]
    assert models.returncode == 0, models.stderr
    model = json.loads(models.stdout)[req.model_name]
    assert model["active"] == result.versions["active"]
    # every key of the round sits on the one master serving its slot ...
    placed = keys_by_master(cluster)
    tag = f"{{{req.round_id}}}"
    holders = {port for port, names in placed.items() if any(tag in k for k in names)}
    slot = int(cluster.cli("cluster", "keyslot", keys.round_hash(req.round_id)))
    assert holders == {_master_of(cluster, slot)}
    (home,) = holders
    ours = {k for k in placed[home] if tag in k}
    assert {keys.round_hash(req.round_id), keys.cohort(req.round_id)} <= ours
    assert keys.iteration(req.round_id, 1) in ours
    # ... and the device registry's keys share one master, as their scripts need
    registry = {keys.devices(), keys.devices_seen()}
    assert sum(registry <= names for names in placed.values()) == 1
    # ... while the rest (leases, blobs, models, dedupe marks) spread over all three
    assert all(placed.values()), {port: len(names) for port, names in placed.items()}


def _master_of(cluster: PrivateCluster, slot: int) -> int:
    """Port of the master serving `slot` (from CLUSTER SLOTS)."""
    with redis.Redis(port=cluster.port) as client:
        for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    raise AssertionError(f"slot {slot} is served by no master")


async def test_each_store_write_over_several_keys_runs_on_the_cluster(
    cluster_stack: LocalStack,
) -> None:
    """The writes a healthy round may never make (a retry journaled, a dead letter, a
    registry entry forgotten) and those spanning two tags, each once on the cluster."""
    # Prepare
    store = SagaStore.from_url(cluster_stack.settings.redis_url)
    service, rid = "cluster-probe", "cluster-r1"
    first, second = InFlight.new("fl/x", b"one"), InFlight.new("fl/y", b"two")
    try:
        # Execute / Assert: the retry journal and the dead letters ({service})
        await store.journal_retry_at(service, "a", first.failed("RetryLater"), 0)
        await store.journal_retry_at(service, "a", second, 0)
        due = await store.journal_due(service, "a", now_ms())
        assert {i.entry for i in due} == {first.entry, second.entry}
        await store.dead_letter(service, "a", first.failed("RetryLater"))
        await store.journal_remove(service, "a", second.entry)
        assert await store.journal(service, "a") == []
        (letter,) = await store.dead_letters(service)
        assert (letter["topic"], letter["error"]) == ("fl/x", "RetryLater")
        # the device registry ({devices})
        await store.put_device(DeviceStatus(device_id="cluster-d1", num_examples=3))
        assert "cluster-d1" in {d.device_id for d in await store.devices(seen_since_ms=0)}
        assert "cluster-d1" in await store.forget_devices(now_ms() + 1)
        assert await store.device("cluster-d1") is None
        # a round and the index of rounds (two slots): created once, indexed either way
        req = request(round_id=rid)
        assert await store.create_round(req)
        assert not await store.create_round(req)
        assert rid in await store.rounds()
        assert (await store.get_round(rid)).request_id == req.msg_id
        # a round's sets and hashes, with their TTL; more members than one Lua unpack takes
        many = [f"d{i}" for i in range(10_001)]
        assert await store.sadd(keys.cohort(rid), *many) == 10_001
        assert await store.sadd(keys.cohort(rid), "d0", "d-new") == 1
        await store.hset(keys.held(rid), {d: "digest" for d in many[:5_001]})
        assert len(await store.hgetall(keys.held(rid))) == 5_001
        for key in (keys.cohort(rid), keys.held(rid)):
            assert 0 < await store.redis.ttl(key) <= store.ttl_s
        assert await store.set_once(rid, "pinned", "a") == "a"
        assert await store.set_once(rid, "pinned", "b") == "a"
        # a version and the indexes of versions and models (three slots)
        assert await store.claim_version("cluster-m", "1.0.0", rid) == rid
        await store.register_version("cluster-m", "1.0.0", {"round_id": rid, "digest": "d"})
        await store.register_version("cluster-m", "1.0.0", {"round_id": rid, "digest": "d"})
        assert await store.versions("cluster-m") == ["1.0.0"]
        assert "cluster-m" in await store.model_names()
    finally:
        await store.aclose()


async def test_commands_and_scripts_ride_out_a_master_restarting(
    cluster_stack: LocalStack,
) -> None:
    """As with a single Redis: a restart costs time, not errors (runs last: it restarts a
    master under the stack)."""
    # Prepare: rounds on every master; the one to restart serves some of them
    cluster = cluster_stack.servers.redis
    assert isinstance(cluster, PrivateCluster)
    store = SagaStore.from_url(cluster.url)
    rounds = [f"restart-{i}" for i in range(30)]
    victim = cluster.nodes[1]
    slots = [int(cluster.cli("cluster", "keyslot", keys.round_hash(r))) for r in rounds]
    assert victim.port in {_master_of(cluster, slot) for slot in slots}

    async def outage() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(victim.stop)  # SIGTERM: it writes its AOF out and exits
        await asyncio.sleep(1.0)
        await asyncio.to_thread(victim.start)

    # Execute: a command and a script on each round in turn, across the restart
    done, slowest = 0, 0.0
    restart = asyncio.create_task(outage())
    try:
        while not restart.done() or done < 2 * len(rounds):
            rid = rounds[done % len(rounds)]
            started = time.monotonic()
            await store.set_fields(rid, {"n": done})
            assert await store.hcas(keys.round_hash(rid), "n", str(done), "seen")
            slowest = max(slowest, time.monotonic() - started)
            done += 1
            await asyncio.sleep(0.01)
        await restart
    finally:
        await store.aclose()
        await asyncio.to_thread(cluster.wait_ok)

    # Assert: none failed, and some waited for the master to come back
    assert slowest > 0.5, slowest


async def test_a_cluster_that_cannot_be_reached_is_a_connection_error() -> None:
    # Prepare: a cluster URL naming two ports nothing listens on
    store = SagaStore.from_url(f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}")

    # Execute / Assert: what the runtime takes for "Redis away" (reconnect, retry later),
    # as from a single server, not a bug
    try:
        with pytest.raises(RedisConnectionError, match="cannot be connected"):
            await store.redis.ping()
    finally:
        await store.aclose()
