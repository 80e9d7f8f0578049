"""The Python API: start a round and await its result in one call.

async with FedSaga(mqtt_port=..., redis_url=...) as saga:
    result = await saga.run(RoundRequested(round_id="r1", target_accuracy=0.9))
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
from aiomqtt import ProtocolVersion

from fedsaga.status import RoundResult, round_result
from schemas import topics
from schemas.codec import decode, encode
from schemas.errors import DecodeError
from schemas.events import SagaEvent
from schemas.ops import RoundRequested
from services.runtime.store import SagaStore


class FedSaga:
    """A connection to a fedsaga deployment: its broker and its Redis."""

    def __init__(
        self,
        *,
        mqtt_host: str = "127.0.0.1",
        mqtt_port: int = 1883,
        redis_url: str = "redis://127.0.0.1:6379/0",
    ) -> None:
        self.mqtt_host, self.mqtt_port = mqtt_host, mqtt_port
        self.store = SagaStore.from_url(redis_url)
        self._client: aiomqtt.Client | None = None
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._listeners: list[Callable[[str, Any], None]] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FedSaga:
        self._client = aiomqtt.Client(
            self.mqtt_host,
            self.mqtt_port,
            identifier=f"fedsaga-ops-{uuid.uuid4().hex[:8]}",
            protocol=ProtocolVersion.V5,
        )
        await self._client.__aenter__()
        await self._client.subscribe(topics.ROUND_ALL, qos=1)
        await self._client.subscribe(topics.COMPENSATED_ALL, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
        await self.store.aclose()

    async def _read(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            try:
                event: Any = decode(message.payload, SagaEvent)  # type: ignore[arg-type]
            except DecodeError:
                continue
            for listener in self._listeners:
                listener(message.topic.value, event)
            if event.kind == "round.completed":
                waiter = self._waiters.get(event.round_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)

    def on_event(self, listener: Callable[[str, Any], None]) -> None:
        """Call `listener(topic, event)` for every saga event seen (progress display)."""
        self._listeners.append(listener)

    async def start(self, request: RoundRequested) -> None:
        """Publish a round request (fire and forget)."""
        assert self._client is not None
        await self._client.publish(topics.ROUND_START, encode(request), qos=1)

    async def run(self, request: RoundRequested, *, timeout: float = 300.0) -> RoundResult:
        """Start a round and return its result once it completed or was compensated."""
        done = self._waiters[request.round_id] = asyncio.get_running_loop().create_future()
        try:
            await self.start(request)
            await asyncio.wait_for(done, timeout)
        finally:
            self._waiters.pop(request.round_id, None)
        return await self.status(request.round_id)

    async def status(self, round_id: str) -> RoundResult:
        """The round as Redis has it now."""
        return await round_result(self.store, round_id)

    async def events(self) -> AsyncIterator[Any]:
        """Saga events as they arrive."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.on_event(lambda _topic, event: queue.put_nowait(event))
        while True:
            yield await queue.get()
