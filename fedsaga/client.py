"""The Python API: start a round and await its result in one call.

async with FedSaga(mqtt_port=..., redis_url=...) as saga:
    result = await saga.run(RoundRequested(round_id="r1", target_accuracy=0.9))

Where the broker and Redis are comes from the same settings as every fedsaga process
(services/runtime/settings.py: keyword arguments, then FEDSAGA_* variables, then the config
file); `FedSaga(Settings(mqtt_url="mqtts://fedsaga-ops:...@broker:8883"))` works too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt

from fedsaga.status import RoundResult, UnknownRound, round_result
from schemas import topics
from schemas.codec import decode, encode
from schemas.errors import DecodeError
from schemas.events import SagaEvent
from schemas.mqtt import connect, redact
from schemas.ops import RoundRequested, RoundStopRequested
from services.runtime.settings import Settings
from services.runtime.store import SagaStore

POLL_S = 1.0
APPEAR_S = 5.0  # how long stop() waits for a just-requested round to be recorded
OPS_USER = "fedsaga-ops"
RECONNECT_S = 0.5


class RoundExists(ValueError):
    """A round with this id was requested before: round ids are never reused."""


class RoundNotRunning(ValueError):
    """The round has ended (or is already failing): there is nothing to stop."""


class FedSaga:
    """A connection to a fedsaga deployment: its broker and its Redis."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or Settings(**overrides)
        # Operators log in as fedsaga-ops (mosquitto/fedsaga.acl) unless told otherwise.
        self.endpoint = self.settings.mqtt_endpoint(OPS_USER)
        self.store = SagaStore.from_url(self.settings.redis_url)
        self._client: aiomqtt.Client | None = None
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._listeners: list[Callable[[str, Any], None]] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        """The broker and Redis this client talks to, for messages."""
        return f"broker {self.endpoint.url}, Redis {redact(self.settings.redis_url)}"

    async def __aenter__(self) -> FedSaga:
        await self._connect()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._disconnect()
        await self.store.aclose()

    async def _connect(self) -> None:
        client = connect(self.endpoint, f"{OPS_USER}-{uuid.uuid4().hex[:8]}")
        await client.__aenter__()
        await client.subscribe(topics.ROUND_ALL, qos=1)
        await client.subscribe(topics.COMPENSATED_ALL, qos=1)
        self._client = client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def _read(self) -> None:
        """Deliver events to listeners and waiters; reconnect when the broker goes away."""
        while True:
            try:
                if self._client is None:
                    await self._connect()
                assert self._client is not None
                async for message in self._client.messages:
                    self._deliver(message.topic.value, message.payload)  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await self._disconnect()
                await asyncio.sleep(RECONNECT_S)

    def _deliver(self, topic: str, payload: bytes) -> None:
        try:
            event: Any = decode(payload, SagaEvent)
        except DecodeError:
            return
        for listener in self._listeners:
            listener(topic, event)
        if event.kind == "round.completed":
            waiter = self._waiters.get(event.round_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)

    def on_event(self, listener: Callable[[str, Any], None]) -> None:
        """Call `listener(topic, event)` for every saga event seen (progress display)."""
        self._listeners.append(listener)

    async def start(self, request: RoundRequested) -> None:
        """Publish a round request (fire and forget); `RoundExists` if the id was used."""
        if self._client is None:
            raise aiomqtt.MqttError("not connected to the broker")
        existing = await self.store.get_round(request.round_id)
        if existing.status != "unknown":
            raise RoundExists(
                f"round {request.round_id} already exists ({existing.status}); "
                "round ids are never reused"
            )
        if not await self.store.claim_round_id(request.round_id):  # another client, just now
            raise RoundExists(
                f"round {request.round_id} was already requested; round ids are never reused"
            )
        await self._client.publish(topics.ROUND_START, encode(request), qos=1)

    async def run(self, request: RoundRequested, *, timeout: float = 300.0) -> RoundResult:
        """Start a round and return its result once it completed or was compensated."""
        # Listen before the request goes out, so its completion cannot slip past.
        self._waiters.setdefault(request.round_id, asyncio.get_running_loop().create_future())
        try:
            await self.start(request)
        except BaseException:
            self._waiters.pop(request.round_id, None)
            raise
        return await self.wait(request.round_id, timeout=timeout)

    async def stop(self, round_id: str, reason: str = "") -> None:
        """Ask the selector to cancel a running round (`UnknownRound`, or `RoundNotRunning`
        when it has already ended); the compensations of the steps done follow."""
        if self._client is None:
            raise aiomqtt.MqttError("not connected to the broker")
        state = await self.store.get_round(round_id)
        # A round requested a moment ago may not be recorded yet: give the selector a moment.
        deadline = time.monotonic() + APPEAR_S
        while not state.exists and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            state = await self.store.get_round(round_id)
        if not state.exists:
            raise UnknownRound(f"no round {round_id}")
        if not state.running:
            raise RoundNotRunning(f"round {round_id} is {state.status}, not running")
        stop = RoundStopRequested(round_id=round_id, reason=reason)
        await self._client.publish(topics.ROUND_STOP, encode(stop), qos=1)

    async def wait(self, round_id: str, *, timeout: float = 300.0) -> RoundResult:
        """The round's result once it completed (succeeded, or failed and compensated).

        The terminal event usually arrives over MQTT; the round's log in Redis is checked too,
        so a dropped connection (a broker restart, say) delays the answer by at most a poll.
        """
        done = self._waiters.setdefault(round_id, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(timeout):
                while not done.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(done), POLL_S)
                    if await self.store.last_event_kind(round_id) == "round.completed":
                        break
        except TimeoutError:
            raise TimeoutError(
                f"round {round_id}: no result within {timeout:g} s "
                f"(status {(await self.store.get_round(round_id)).status}); {self.where}"
            ) from None
        finally:
            self._waiters.pop(round_id, None)
        return await self.status(round_id)

    async def status(self, round_id: str) -> RoundResult:
        """The round as Redis has it now."""
        return await round_result(self.store, round_id)
