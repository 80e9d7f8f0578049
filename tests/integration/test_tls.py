"""A whole round on a broker run from mosquitto/prod.conf itself: TLS with certificates made
here, a password for every service instance, the operator and each device, and the project's
ACL. The services are real processes, the fleet logs in device by device, the operator (the
Python client, then the CLI) logs in as fedsaga-ops; and what that broker refuses."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import secrets
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from deploy.limits import BROKER_FILES_RESERVE
from deploy.servers import ACL_FILE, PROD_CONF, ProdBroker, free_port, listener_block
from deploy.stack import LocalStack
from edge_client.fleet import Fleet, FleetSpec
from fedsaga.client import OPS_USER, FedSaga
from schemas import topics
from schemas.codec import encode
from schemas.events import NodesSelected, RoundCompleted, RoundFailed
from schemas.mqtt import MqttEndpoint, connect
from schemas.ops import RoundRequested
from services.runtime.store import SagaStore
from tests.integration.conftest import request
from tests.integration.tls_helpers import Pki, make_pki, password_file

DEVICES = [f"tls-{i:04d}" for i in range(8)]  # FleetSpec(prefix="tls")'s ids
SPY = "tls-spy"  # a device of the ACL (any user that is not a service or the operator)
# Options whose values are this machine's, not the deployment's.
LOCAL_OPTIONS = {
    "listener",
    "password_file",
    "acl_file",
    "certfile",
    "keyfile",
    "cafile",
    "persistence_location",
}
# Lowered to what this machine's open-file limit holds, where that is below the deployment's
# (deploy/limits.py): unchanged on a machine with a high limit.
FITTED_OPTIONS = {"max_connections"}


@dataclass(frozen=True)
class Secured:
    """The stack on prod.conf's broker, its certificates and everyone's password."""

    stack: LocalStack
    pki: Pki
    passwords: dict[str, str]
    client_cert_port: int

    @property
    def port(self) -> int:
        """The TLS listener prod.conf opens (with passwords, no client certificate)."""
        return self.stack.servers.broker.port

    def endpoint(self, user: str | None = None, **changes: object) -> MqttEndpoint:
        """The TLS listener, trusting our CA, logged in as `user` with their password."""
        base = MqttEndpoint(host="127.0.0.1", port=self.port, ca_file=str(self.pki.ca))
        password = self.passwords.get(user) if user else None
        return base.login(user, password).model_copy(update=changes)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """mosquitto from prod.conf with TLS and a password file, Redis, the six services."""
    work = tmp_path_factory.mktemp("tls")
    pki = make_pki(work / "certs", OPS_USER)
    client_cert_port = free_port()
    broker = ProdBroker(
        ca_file=pki.ca,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        password_file=work / "passwd",  # written below, read when the broker starts
        client_cert_port=client_cert_port,
    )
    stack = LocalStack(work, broker=broker, canary_timeout_ms=5_000)
    identities = {name: stack.settings.service_identity(name) for name in stack.services}
    users = [*identities.values(), OPS_USER, *DEVICES, SPY]
    passwords = {user: secrets.token_urlsafe(12) for user in users}
    password_file(broker.password_file, passwords)
    for name, proc in stack.services.items():
        # Each instance logs in as its identity with a password of its own.
        proc.settings = stack.settings.model_copy(
            update={"mqtt_password": passwords[identities[name]]}
        )
    with stack:
        yield Secured(stack, pki, passwords, client_cert_port)


@pytest.fixture(scope="module")
async def fleet(secured: Secured) -> AsyncIterator[Fleet]:
    """Eight devices over TLS, each logged in as itself with its own password, registered."""
    settings = secured.stack.settings
    spec = FleetSpec(
        devices=len(DEVICES),
        prefix="tls",
        low_battery_share=0.0,
        data_seed=settings.data_seed,
        holdout_fraction=settings.holdout_fraction,
    )
    passwords = {d: secured.passwords[d] for d in DEVICES}
    async with Fleet(spec, secured.endpoint(), passwords=passwords) as f:
        store = SagaStore.from_url(settings.redis_url)
        try:
            async with asyncio.timeout(10):
                while set(DEVICES) - {d.device_id for d in await store.devices()}:
                    await asyncio.sleep(0.05)
        finally:
            await store.aclose()
        yield f


def small_round(**overrides: object) -> RoundRequested:
    """Two iterations over six of the eight devices."""
    fields = {"training_rounds": 2, "cohort_size": 6, "min_participating_nodes": 3}
    return request(**(fields | overrides))


def option_names(lines: list[str]) -> list[str]:
    """The option each config line sets (or its comment's first word)."""
    return [line.split(" ", 1)[0] for line in lines]


def changed(before: list[str], after: list[str]) -> set[str]:
    """The options whose lines differ between two configs with the same lines in order."""
    assert option_names(before) == option_names(after)
    return {a.split(" ", 1)[0] for a, b in zip(before, after, strict=True) if a != b}


def test_the_broker_runs_prod_conf_with_only_port_and_paths_changed(secured: Secured) -> None:
    # Prepare
    ran = (secured.stack.workdir / "mosquitto.conf").read_text().splitlines()
    prod = PROD_CONF.read_text().splitlines()
    listener = listener_block(PROD_CONF.read_text()).splitlines()

    # Execute: prod.conf line by line, a blank line, its listener again for client certificates
    main, blank, second = ran[: len(prod)], ran[len(prod)], ran[len(prod) + 1 :]
    second, tail = second[: len(listener)], [line for line in second[len(listener) :] if line]

    # Assert: every option as deployed but this machine's port and files
    assert changed(prod, main) - FITTED_OPTIONS == LOCAL_OPTIONS
    assert f"acl_file {ACL_FILE}" in main  # the project's ACL itself
    assert f"listener {secured.port} 127.0.0.1" in main
    assert "require_certificate false" in main  # client certificates stay optional
    # the copy of the listener differs in its port and in requiring a client certificate
    assert blank == ""
    assert changed(listener, second) - FITTED_OPTIONS == LOCAL_OPTIONS & set(
        option_names(listener)
    ) | {"require_certificate"}
    # both listeners hold no more clients than the broker has files for
    limit = int(secured.stack.servers.broker.open_files or 0)
    for line in (*main, *second):
        if line.startswith("max_connections "):
            assert 10_000 <= int(line.split()[1]) <= limit - BROKER_FILES_RESERVE
    assert f"listener {secured.client_cert_port} 127.0.0.1" in second
    assert "require_certificate true" in second
    # and nothing else but stay_user() (a root test run keeps the broker root)
    assert tail in ([], ["user root"])


async def test_a_round_over_tls_with_a_password_per_device(secured: Secured, fleet: Fleet) -> None:
    # Prepare: the operator on the listener that demands a client certificate; a device that
    # tries to read every other device's traffic and the saga's, and to forge saga events
    ops = secured.stack.settings.model_copy(
        update={
            "mqtt_port": secured.client_cert_port,
            "mqtt_password": secured.passwords[OPS_USER],
            "mqtt_cert_file": str(secured.pki.client.cert),
            "mqtt_key_file": str(secured.pki.client.key),
        }
    )
    req = small_round()
    forged_request = small_round()
    seen_by_ops: list[str] = []
    seen_by_spy: list[str] = []
    selected = asyncio.Event()

    def on_event(topic: str, event: object) -> None:
        seen_by_ops.append(topic)
        if topic == topics.round_event(req.round_id, NodesSelected.topic_name):
            selected.set()

    async with (
        FedSaga(ops) as saga,
        connect(secured.endpoint(SPY), SPY) as spy,
    ):
        for pattern in ("fl/#", "fl/device/+/cmd", "fl/device/+/model", topics.ALL_UPDATES):
            await spy.subscribe(pattern, qos=1)
        await spy.subscribe(topics.device(topics.DEVICE_CMD, DEVICES[0]), qos=1)

        async def spy_on() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                async for message in spy.messages:
                    seen_by_spy.append(message.topic.value)

        spying = asyncio.create_task(spy_on())
        saga.on_event(on_event)

        # Execute
        running = asyncio.create_task(saga.run(req, timeout=120))
        async with asyncio.timeout(30):  # the cohort is leased (or the round failed early)
            while not selected.is_set() and not running.done():
                await asyncio.sleep(0.02)
        forged = RoundFailed(round_id=req.round_id, step=3, reason="forged by a device")
        await spy.publish(
            topics.round_event(req.round_id, RoundFailed.topic_name), encode(forged), qos=1
        )
        await spy.publish(topics.ROUND_START, encode(forged_request), qos=1)
        forged_mid_round = not running.done()
        result = await running
        spying.cancel()
        await asyncio.gather(spying, return_exceptions=True)
        log = [e["kind"] for e in await saga.store.events(req.round_id)]
        forged_round = await saga.store.get_round(forged_request.round_id)

    # Assert: the round ran over TLS end to end, every cohort device in every iteration
    assert result.succeeded, result
    assert result.participation["participants_per_iteration"] == [6, 6]
    assert result.versions["deployed"] is not None
    deployed = {a.models.current.version if a.models.current else None for a in fleet.agents}
    assert deployed == {result.versions["deployed"]}, deployed  # its commands reached all
    assert topics.round_event(req.round_id, RoundCompleted.topic_name) in seen_by_ops
    # the broker dropped the device's forgeries: no service and not the operator saw them
    assert forged_mid_round
    assert "round.failed" not in log
    assert topics.round_event(req.round_id, RoundFailed.topic_name) not in seen_by_ops
    assert forged_round.status == "unknown"
    # and the device read nothing of the others' commands, models and updates, or the saga's
    assert seen_by_spy == []


async def test_the_cli_runs_a_round_over_tls_as_the_operator(
    secured: Secured, fleet: Fleet
) -> None:
    # Prepare: the operator's environment, as the README tells them to set it
    rid = small_round().round_id
    url = f"mqtts://{OPS_USER}:{secured.passwords[OPS_USER]}@127.0.0.1:{secured.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSAGA_")} | {
        "FEDSAGA_CONFIG": os.devnull,
        "FEDSAGA_MQTT_URL": url,
        "FEDSAGA_MQTT_CA_FILE": str(secured.pki.ca),
        "FEDSAGA_REDIS_URL": secured.stack.settings.redis_url,
    }
    options = "--create-model --training-rounds 2 --cohort-size 6 --min-participating-nodes 3"
    options += " --target-accuracy 0.5 --local-epochs 2 --batch-size 16 --learning-rate 0.1"

    # Execute
    started = await fedsaga(env, f"round start {rid} {options} --wait")
    status = await fedsaga(env, f"round status {rid} --json")
    listed = await fedsaga(env, "fleet")

    # Assert: each exits 0; the round succeeded; the password is never printed
    for code, out, err in (started, status, listed):
        assert code == 0, out + err
        assert secured.passwords[OPS_USER] not in out + err
    assert json.loads(started[1])["status"] == "succeeded"
    assert json.loads(status[1])["status"] == "succeeded"
    assert all(device in listed[1] for device in DEVICES)


async def fedsaga(env: dict[str, str], arguments: str) -> tuple[int, str, str]:
    """Run the CLI (`.venv/bin/fedsaga ARGUMENTS`): its exit code, stdout and stderr.
    Asynchronously: the fleet it may wait on runs in this process's event loop."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "fedsaga"),
        *arguments.split(),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def refused(endpoint: MqttEndpoint, identifier: str = "tls-refused") -> aiomqtt.MqttError:
    """The error a login to `endpoint` fails with (the test fails if it gets in)."""
    with pytest.raises(aiomqtt.MqttError) as caught:
        async with connect(endpoint, identifier, timeout=3):
            pass
    return caught.value


async def broker_logs(secured: Secured, since: int, *reasons: str) -> None:
    """Wait until the broker's log, from offset `since`, has a line with each reason."""
    log = secured.stack.servers.broker.log
    async with asyncio.timeout(5):
        while not all(r in log.read_text(errors="replace")[since:] for r in reasons):
            await asyncio.sleep(0.05)


async def test_anonymous_clients_and_wrong_passwords_are_refused(secured: Secured) -> None:
    # Prepare
    device = DEVICES[0]

    # Execute: no credentials; a wrong password; a user with no password entry; another
    # user's password
    anonymous = await refused(secured.endpoint())
    wrong = await refused(secured.endpoint(device, password="not-" + secured.passwords[device]))
    unknown = await refused(secured.endpoint("nobody", password="guess"))
    others = await refused(secured.endpoint(device, password=secured.passwords[SPY]))

    # Assert: the broker answers each over TLS with a CONNACK that refuses it
    for error in (anonymous, wrong, unknown, others):
        assert isinstance(error, aiomqtt.MqttCodeError), error
        assert error.rc in (134, 135), error  # bad user name or password / not authorized


async def test_the_tls_layer_refuses_plain_mqtt_and_missing_or_foreign_certificates(
    secured: Secured,
) -> None:
    # Prepare: valid credentials each time, so only the transport can be what is refused
    since = len(secured.stack.servers.broker.log.read_text(errors="replace"))
    listener = secured.endpoint(OPS_USER, port=secured.client_cert_port)
    foreign = {
        "cert_file": str(secured.pki.stranger.cert),
        "key_file": str(secured.pki.stranger.key),
    }

    # Execute (together: each waits out its client's timeout, the broker having hung up)
    await asyncio.gather(
        refused(MqttEndpoint(port=secured.port).login(SPY, secured.passwords[SPY]), SPY),
        refused(listener, OPS_USER),
        refused(listener.model_copy(update=foreign), OPS_USER),
    )

    # Assert: in the broker's words
    await broker_logs(
        secured,
        since,
        "wrong version number",  # MQTT without TLS on the TLS port
        "peer did not return a certificate",  # no certificate where one is required
        "certificate verify failed",  # one from a CA the broker does not trust
    )


async def test_a_client_without_our_ca_does_not_trust_the_broker(secured: Secured) -> None:
    # Prepare: TLS verified against the system's CAs, which never signed our broker
    endpoint = secured.endpoint(SPY, ca_file=None, tls=True)

    # Execute / Assert
    with warnings.catch_warnings():
        # paho-mqtt 2.2 leaves the socket of a failed handshake open (_ssl_wrap_socket does
        # not close it when do_handshake raises); let it be collected here, unreported: the
        # event loop lets go of the error within a turn or two.
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
            async with connect(endpoint, SPY, timeout=3):
                pass
        await asyncio.sleep(0.1)
        gc.collect()


async def test_a_client_certificate_goes_with_a_password_not_instead(secured: Secured) -> None:
    # Prepare
    certified = secured.endpoint(OPS_USER, port=secured.client_cert_port).model_copy(
        update={"cert_file": str(secured.pki.client.cert), "key_file": str(secured.pki.client.key)}
    )

    # Execute
    anonymous = await refused(certified.login(None, None))
    async with connect(certified, OPS_USER, timeout=3):
        pass

    # Assert: a certificate alone is not a login; with the password it is
    assert isinstance(anonymous, aiomqtt.MqttCodeError), anonymous
