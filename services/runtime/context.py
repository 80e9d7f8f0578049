"""What a handler may touch: the store, the settings and publishing, never the raw client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiomqtt
import structlog
from pydantic import BaseModel

from schemas import topics
from schemas.codec import encode
from schemas.device import DeviceRejected
from schemas.events import ErrorReport, Event, RoundFailed, StepCompensated
from services.runtime.errors import Rejected, SagaConflict
from services.runtime.settings import Settings
from services.runtime.state import Field
from services.runtime.store import SagaStore

log = structlog.get_logger()

E = TypeVar("E", bound=Event)

PUBLISH_WINDOW = 256  # publishes awaiting the broker's acknowledgement at once


def topic_of(event: Event) -> str:
    """The topic a saga event is published on."""
    if isinstance(event, StepCompensated):
        return topics.compensated(event.round_id, event.step)
    return topics.round_event(event.round_id, event.topic_name)


@dataclass
class Context:
    """A service's handle on the world while it handles one message."""

    service: str
    settings: Settings
    store: SagaStore
    client: aiomqtt.Client | None = None
    topic: str = ""  # topic of the message being handled

    @property
    def log(self) -> Any:
        """The structured logger (the runtime binds round id and topic around each handler)."""
        return log

    async def publish(self, topic: str, message: BaseModel, *, retain: bool = False) -> None:
        """Publish a message at QoS 1."""
        if self.client is None:
            raise aiomqtt.MqttError("not connected")
        await self.client.publish(topic, encode(message), qos=1, retain=retain)

    async def publish_all(self, topics_: Iterable[str], message: BaseModel) -> None:
        """Publish one message to many topics at QoS 1 (a command to each of a cohort).

        Encoded once, and the broker's acknowledgements awaited together, PUBLISH_WINDOW at
        a time: one after another, each publish waits a round trip to the broker, which
        made telling 1,000 devices to train take about as long as their training.
        """
        if self.client is None:
            raise aiomqtt.MqttError("not connected")
        payload, client = encode(message), self.client
        pending = list(topics_)
        for start in range(0, len(pending), PUBLISH_WINDOW):
            window = pending[start : start + PUBLISH_WINDOW]
            await asyncio.gather(*(client.publish(t, payload, qos=1) for t in window))

    async def emit(self, event: Event) -> None:
        """Append a saga event to its round's log (once per msg_id), then publish it."""
        if await self.store.append_event(event.round_id, self.service, event):
            log.info("emitted", kind=event.kind, round_id=event.round_id)
        await self.publish(topic_of(event), event)

    async def emit_once(self, key: str, event: E) -> E:
        """Record `event` as the round's outcome `key` and publish the recorded event.

        The record is the outbox: the first writer's event wins, and a replay (the process
        died, or the broker dropped, after the decision) publishes the same event again, same
        msg_id, which consumers drop as a duplicate. Deciding and publishing can therefore
        never come apart. Returns the recorded event.
        """
        recorded, first = await self.store.record_outcome(event.round_id, key, event)
        if first:
            await self.store.append_event(event.round_id, self.service, recorded)
        await self.publish(topic_of(recorded), recorded)
        if first:
            log.info("emitted", kind=recorded.kind, round_id=recorded.round_id)
        return recorded

    async def republish(self, round_id: str, key: str, model: type[E]) -> E | None:
        """Publish the round's recorded outcome `key` again, if there is one."""
        recorded = await self.store.outcome(round_id, key, model)
        if recorded is not None:
            await self.publish(topic_of(recorded), recorded)
        return recorded

    async def fail(
        self,
        round_id: str,
        step: int,
        reason: str,
        *,
        seen: Mapping[Field, str] | None = None,
    ) -> None:
        """Fail the round at `step`; compensations of step..1 follow.

        The first failure wins; calling again (a replay, a second failing step) re-publishes
        the recorded RoundFailed. With `seen` (fields as the caller read them when it chose
        `step`), the failure applies only if they still hold: a round that moved on while
        still running raises SagaConflict, so the message is retried against the new state.
        """
        applied = await self.store.transition(
            round_id,
            {Field.STATUS: "running", **(seen or {})},
            {Field.STATUS: "compensating", Field.FAILED_STEP: step, Field.FAILURE_REASON: reason},
        )
        state = await self.store.get_round(round_id)
        if not applied and seen is not None and state.running:
            raise SagaConflict(f"round {round_id} moved on before it could fail at step {step}")
        if state.failing and state.failed_step is not None:
            failed = RoundFailed(
                round_id=round_id, step=state.failed_step, reason=state.failure_reason or ""
            )
            await self.emit_once("failed", failed)

    async def reject(self, topic: str, reason: str, round_id: str | None = None) -> None:
        """Report rejected input on `fl/errors/{service}`, and to its device when a device
        sent it (on `fl/device/{id}/rejected`, which the ACL lets only that device read)."""
        log.warning("rejected", topic=topic, reason=reason, round_id=round_id)
        report = ErrorReport(service=self.service, topic=topic, reason=reason, round_id=round_id)
        await self.publish(topics.errors(self.service), report)
        try:
            device_id = topics.device_of(topic)
        except ValueError:
            return  # an operator's or a service's message: the error topic is enough
        told = DeviceRejected(
            device_id=device_id,
            service=self.service,
            topic=topic,
            reason=reason,
            round_id=round_id,
        )
        await self.publish(topics.device(topics.DEVICE_REJECTED, device_id), told)

    def check_device(self, device_id: str) -> None:
        """Reject a device message whose device id differs from its topic's."""
        if topics.device_of(self.topic) != device_id:
            raise Rejected(f"device_id {device_id} does not match topic {self.topic}")

    async def schedule(self, round_id: str, tag: str, at_ms: int) -> None:
        """Run this service's timer `tag` for the round at `at_ms` (survives restarts)."""
        await self.store.schedule(self.service, round_id, tag, at_ms)
