"""The device agent: its own MQTT connection (client id = device id), its data, its model.

The agent never publishes its data in any form: only weight deltas, example counts, training
loss/accuracy and health metrics leave it. Training (and evaluating, for a canary) runs in a
worker thread, on the `executor` the fleet gives (a small pool per process), so the agent
keeps answering stop/revoke commands while it trains.

What the device decides (train, pause or fail) is in `decisions.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar

import aiomqtt
import numpy as np
import structlog
from aiomqtt import Will
from pydantic import BaseModel

from edge_client.config import DeviceProfile
from edge_client.decisions import (
    battery_after_training,
    corrupts_update,
    reported_accuracy,
    training_decision,
)
from edge_client.store import Held, LocalModelStore
from edge_client.trainer import evaluate, train_update
from federated.errors import PayloadError
from federated.payload import apply_payload, read_payload
from schemas import topics
from schemas.codec import decode, encode
from schemas.device import (
    DeployCommand,
    DeviceCommand,
    DeviceRejected,
    DeviceReport,
    DeviceState,
    DeviceStatus,
    DeviceUpdate,
    FailureReason,
    ModelPayload,
    ReportStatus,
    RevokeCommand,
    RollbackCommand,
    StopCommand,
    TrainCommand,
)
from schemas.errors import DecodeError
from schemas.mqtt import MqttEndpoint, connect

log = structlog.get_logger()

T = TypeVar("T")

# How often an idle device re-announces its status (retained) to the registry.
STATUS_INTERVAL_S = 60.0
# The broker keeps a device's session (and queued commands) this long after it disconnects.
SESSION_EXPIRY_S = 3600


class DeviceAgent:
    """One simulated (or real) device speaking the fedsaga device protocol."""

    def __init__(
        self,
        device_id: str,
        x: np.ndarray,
        y: np.ndarray,
        *,
        endpoint: MqttEndpoint,
        profile: DeviceProfile | None = None,
        password: str | None = None,
        seed: int = 0,
        executor: Executor | None = None,
        connect_gate: asyncio.Semaphore | None = None,
    ) -> None:
        """`executor` runs training and evaluation (the loop's default one when None);
        `connect_gate` bounds how many agents of a process connect at once."""
        self.device_id = device_id
        self._x, self._y = x, y  # local data: stays in this process
        # With a password the device authenticates as its own id: the broker's ACL confines
        # each username to its own topics (mosquitto/fedsaga.acl).
        self.endpoint = endpoint.login(device_id, password) if password else endpoint
        self.profile = profile or DeviceProfile()
        self.battery = self.profile.battery
        self.models = LocalModelStore()
        self.rng = np.random.default_rng(seed)
        self._executor = executor
        self._connect_gate = connect_gate or asyncio.Semaphore(1)
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._training: dict[str, asyncio.Task[None]] = {}
        self._trained: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.state: DeviceState = "idle"
        self.rejections: list[DeviceRejected] = []  # what the services refused, and why

    # -- wire helpers -----------------------------------------------------------------------

    def status(self, state: DeviceState | None = None) -> DeviceStatus:
        """This device's status message."""
        current = self.models.current
        return DeviceStatus(
            device_id=self.device_id,
            state=state or self.state,
            battery=round(self.battery, 4),
            charging=self.profile.charging,
            network=self.profile.network,  # type: ignore[arg-type]
            memory_mb=self.profile.memory_mb,
            num_examples=len(self._y),
            model_version=current.version if current else None,
            model_digest=current.digest if current else None,
        )

    async def _publish(
        self, template: str, message: BaseModel, *, retain: bool = False, wait_s: float = 0.0
    ) -> bool:
        """Publish at QoS 1; while disconnected, keep trying for up to `wait_s` seconds.

        Only background work (training) may wait: a handler in the message loop must not, as
        the loop is what reconnects.
        """
        deadline = time.monotonic() + wait_s
        while True:
            client = self.client
            if client is not None:
                try:
                    await client.publish(
                        topics.device(template, self.device_id),
                        encode(message),
                        qos=1,
                        retain=retain,
                    )
                    return True
                except aiomqtt.MqttError:
                    pass
            if time.monotonic() >= deadline:
                log.warning(
                    "not sent: broker unreachable",
                    device_id=self.device_id,
                    kind=getattr(message, "kind", "?"),
                )
                return False
            await asyncio.sleep(0.1)

    async def publish_status(self) -> None:
        """Publish (retained) status: the registry and the selector read it."""
        await self._publish(topics.DEVICE_STATUS, self.status(), retain=True)

    async def report(
        self,
        round_id: str,
        status: ReportStatus,
        *,
        iteration: int = 0,
        reason: str | None = None,
        version: str | None = None,
        metrics: dict[str, float] | None = None,
        wait_s: float = 0.0,
    ) -> None:
        """Publish progress, a failure reason or health metrics."""
        await self._publish(
            topics.DEVICE_REPORT,
            DeviceReport(
                round_id=round_id,
                device_id=self.device_id,
                iteration=iteration,
                status=status,
                reason=reason,
                version=version,
                metrics=metrics or {},
            ),
            wait_s=wait_s,
        )

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected (reconnecting), handling commands and payloads until cancelled."""
        try:
            while True:
                # A fresh will (and msg_id) per connection: services deduplicate by msg_id,
                # so a second crash must not look like a redelivery of the first.
                will = Will(
                    topics.device(topics.DEVICE_STATUS, self.device_id),
                    encode(self.status("offline")),
                    qos=1,
                    retain=True,
                )
                try:
                    async with contextlib.AsyncExitStack() as session:
                        async with self._connect_gate:  # connect, subscribe, announce
                            client = await session.enter_async_context(
                                connect(
                                    self.endpoint,
                                    self.device_id,
                                    clean_start=False,
                                    session_expiry_s=SESSION_EXPIRY_S,
                                    keepalive=10,
                                    will=will,
                                )
                            )
                            self.client = client
                            await client.subscribe(
                                [
                                    (topics.device(template, self.device_id), 1)
                                    for template in (
                                        topics.DEVICE_CMD,
                                        topics.DEVICE_MODEL,
                                        topics.DEVICE_REJECTED,
                                    )
                                ]
                            )
                            await self.publish_status()
                        self.connected.set()
                        heartbeat = self._spawn(self._heartbeat())
                        try:
                            async for message in client.messages:
                                await self.handle(message.topic.value, message.payload)  # type: ignore[arg-type]
                        finally:
                            heartbeat.cancel()
                except aiomqtt.MqttError:
                    self.client = None
                    self.connected.clear()
                    await asyncio.sleep(0.5)
        finally:
            for task in [*self._training.values(), *self._tasks]:
                task.cancel()

    async def _heartbeat(self) -> None:
        # The registry forgets devices it has not heard from (services' device_fresh_ms), so
        # an idle device says it is still there. A fleet connects at once: the first wait,
        # between half and all of the interval by device id, keeps thousands of devices from
        # re-announcing in the same second every minute.
        spread = zlib.crc32(self.device_id.encode()) % 500 / 1000  # 0 to 0.5, by device id
        await asyncio.sleep(STATUS_INTERVAL_S * (0.5 + spread))
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                await self.publish_status()
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def go_offline(self) -> None:
        """Leave cleanly, saying so (a crash would leave it to the last will)."""
        if self.client is not None:
            await self._publish(topics.DEVICE_STATUS, self.status("offline"), retain=True)

    async def handle(self, topic: str, payload: bytes) -> None:
        """Dispatch one incoming message; bad input is logged and dropped."""
        try:
            if topic.endswith("/model"):
                await self.on_model(decode(payload, ModelPayload))
            elif topic.endswith("/rejected"):
                self.on_rejected(decode(payload, DeviceRejected))
            else:
                await self.on_command(decode(payload, DeviceCommand))
        except DecodeError as exc:
            log.warning("dropped invalid message", device_id=self.device_id, reason=exc.reason)

    def on_rejected(self, rejected: DeviceRejected) -> None:
        """A service refused something this device sent: say why (nothing else to undo)."""
        self.rejections.append(rejected)
        log.warning(
            "refused by the services",
            device_id=self.device_id,
            service=rejected.service,
            topic=rejected.topic,
            round_id=rejected.round_id,
            reason=rejected.reason,
        )

    async def on_model(self, payload: ModelPayload) -> None:
        """Rebuild weights from a payload and verify their digest."""
        if self.models.lookup(payload.digest) is not None:
            rebuilt = self.models.lookup(payload.digest)
        else:
            base = self.models.lookup(payload.base_digest) if payload.base_digest else None
            if payload.base_digest and base is None:
                await self.report(
                    payload.round_id,
                    "failed",
                    iteration=payload.iteration,
                    reason=FailureReason.MODEL_UNAVAILABLE,
                )
                return
            try:
                rebuilt = apply_payload(read_payload(payload.blob), base)
            except PayloadError as exc:
                log.warning("bad payload", device_id=self.device_id, reason=exc.reason)
                await self.report(
                    payload.round_id,
                    "failed",
                    iteration=payload.iteration,
                    reason=FailureReason.BAD_PAYLOAD,
                )
                return
        assert rebuilt is not None
        held = Held(payload.digest, rebuilt, payload.version)
        if payload.purpose == "train":
            self.models.rounds[payload.round_id] = held
        else:
            self.models.pending_deploy[payload.digest] = held
        async with self._arrived:
            self._arrived.notify_all()

    async def _wait_for(self, digest: str, timeout_s: float) -> Held | None:
        def find() -> Held | None:
            for held in (*self.models.rounds.values(), *self.models.pending_deploy.values()):
                if held.digest == digest:
                    return held
            return None

        async with self._arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._arrived.wait_for(lambda: find() is not None), timeout=max(timeout_s, 0.0)
                )
        return find()

    async def on_command(self, cmd: object) -> None:
        """React to a service's command."""
        match cmd:
            case TrainCommand():
                # A repeated command (redelivery, a coordinator's replay) trains nothing twice.
                if (cmd.round_id, cmd.iteration) not in self._trained:
                    self._trained.add((cmd.round_id, cmd.iteration))
                    self._training[cmd.round_id] = self._spawn(self.train(cmd))
            case StopCommand():
                await self._cancel(cmd.round_id)
                await self.report(cmd.round_id, "stopped", reason=cmd.reason)
            case RevokeCommand():
                await self._cancel(cmd.round_id)
                self.models.revoke(cmd.round_id)
                await self.report(cmd.round_id, "revoked", reason=cmd.reason)
            case DeployCommand():
                # It may wait for its payload, which this very loop delivers: run it aside.
                self._spawn(self.deploy(cmd))
            case RollbackCommand():
                if self.models.rollback(cmd.version):
                    await self.publish_status()
                await self.report(cmd.round_id, "rolled_back", version=cmd.version)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._log_crash)
        return task

    def _log_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("training crashed", device_id=self.device_id, exc_info=task.exception())

    async def _cancel(self, round_id: str) -> None:
        task = self._training.pop(round_id, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = "idle"

    # -- work ---------------------------------------------------------------------------------

    async def _compute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run numerics on the agent's executor, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def train(self, cmd: TrainCommand) -> None:
        """One local training iteration from the round's weights; publish the update."""
        rid, it = cmd.round_id, cmd.iteration

        def left() -> float:  # this is background work: it may wait out a reconnect
            return max(0.0, cmd.deadline_ms / 1000 - time.time())

        decision = training_decision(self.profile, self.battery, cmd.chaos, self.rng)
        if decision.action == "pause":
            self.state = "paused"
            await self.publish_status()
        if decision.reason is not None:
            await self.report(rid, "failed", iteration=it, reason=decision.reason, wait_s=left())
            return
        held = await self._wait_for(cmd.model_digest, left())
        if held is None:
            reason = FailureReason.MODEL_UNAVAILABLE
            await self.report(rid, "failed", iteration=it, reason=reason, wait_s=left())
            return
        self.state = "training"
        await self.report(rid, "training", iteration=it, wait_s=left())
        seed = int(self.rng.integers(2**31))
        corrupt = corrupts_update(self.profile, cmd.chaos)
        blob, stats = await self._compute(
            train_update,
            held.params,
            self._x,
            self._y,
            epochs=cmd.epochs,
            batch_size=cmd.batch_size,
            lr=cmd.learning_rate,
            seed=seed,
            corrupt=corrupt,
        )
        if self.profile.slowdown_s:
            await asyncio.sleep(self.profile.slowdown_s)  # slow hardware, simulated
        self.battery = battery_after_training(self.profile, self.battery)
        self.state = "idle"
        await self._publish(
            topics.DEVICE_UPDATE,
            DeviceUpdate(
                round_id=rid,
                iteration=it,
                device_id=self.device_id,
                base_digest=held.digest,
                num_examples=stats.num_examples,
                train_loss=stats.loss,
                train_accuracy=stats.accuracy,
                blob=blob,
            ),
            wait_s=left(),
        )

    async def deploy(self, cmd: DeployCommand) -> None:
        """Serve the new version, keep the previous one, report health on local data."""
        held = await self._wait_for(cmd.digest, 5.0)
        if held is None and (
            self.models.current is None or self.models.current.digest != cmd.digest
        ):
            await self.report(
                cmd.round_id,
                "deploy_failed",
                version=cmd.version,
                reason=FailureReason.MODEL_UNAVAILABLE,
            )
            return
        current = self.models.current
        before = await self._compute(evaluate, current.params, self._x, self._y) if current else 0.0
        if held is not None:
            self.models.deploy(Held(held.digest, held.params, cmd.version))
            self.models.pending_deploy.pop(cmd.digest, None)
        serving = self.models.current
        assert serving is not None  # deployed above, or was serving already
        measured = await self._compute(evaluate, serving.params, self._x, self._y)
        after = reported_accuracy(self.profile, cmd.chaos, measured)
        await self.publish_status()
        await self.report(
            cmd.round_id,
            "deployed",
            version=cmd.version,
            metrics={"accuracy": after, "previous_accuracy": before},
        )
