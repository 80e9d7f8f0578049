"""The shared service runtime: subscribe, route, decode, dedupe, call, report, reconnect.

A service is a name, a table of routes, optional timers and, for saga steps, a compensation.
The runtime owns the policy once: invalid input and `Rejected` go to `fl/errors/{service}`,
anything else is logged with its traceback and reported, and the loop keeps consuming.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomqtt
import structlog
from aiomqtt import ProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas import topics
from schemas.base import now_ms
from schemas.codec import decode_any, encode
from schemas.errors import DecodeError
from schemas.events import ErrorReport, Event, RoundFailed, StepCompensated
from services.runtime.errors import Rejected
from services.runtime.settings import Settings
from services.runtime.store import SagaStore

log = structlog.get_logger()

Handler = Callable[[Any, "Context"], Awaitable[None]]
TimerHandler = Callable[[str, str, "Context"], Awaitable[None]]
Compensation = Callable[[str, "Context"], Awaitable[str]]


E = TypeVar("E", bound=Event)


def _topic_of(event: Event) -> str:
    if isinstance(event, StepCompensated):
        return topics.compensated(event.round_id, event.step)
    return topics.round_event(event.round_id, event.topic_name)


@dataclass(frozen=True)
class Route:
    """Messages on `topic` (a filter) decode as `model` and go to `handler`."""

    topic: str
    model: Any
    handler: Handler


@dataclass
class Context:
    """What a handler may touch: the store, settings and publishing, never the raw client."""

    service: str
    settings: Settings
    store: SagaStore
    client: aiomqtt.Client | None = None
    topic: str = ""  # topic of the message being handled
    _log: Any = field(default_factory=lambda: log)

    @property
    def log(self) -> Any:
        """The structured logger, with the handler's context bound."""
        return self._log

    async def publish(self, topic: str, message: BaseModel, *, retain: bool = False) -> None:
        """Publish a message at QoS 1."""
        if self.client is None:
            raise RuntimeError("not connected")
        await self.client.publish(topic, encode(message), qos=1, retain=retain)

    async def emit(self, event: Event) -> None:
        """Append a saga event to its round's log, then publish it (for repeatable events)."""
        await self.store.append_event(event.round_id, self.service, event)
        await self.publish(_topic_of(event), event)
        self.log.info("emitted", kind=event.kind, round_id=event.round_id)

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
        await self.publish(_topic_of(recorded), recorded)
        if first:
            self.log.info("emitted", kind=recorded.kind, round_id=recorded.round_id)
        return recorded

    async def republish(self, round_id: str, key: str, model: type[E]) -> E | None:
        """Publish the round's recorded outcome `key` again, if there is one."""
        recorded = await self.store.outcome(round_id, key, model)
        if recorded is not None:
            await self.publish(_topic_of(recorded), recorded)
        return recorded

    async def fail(self, round_id: str, step: int, reason: str) -> None:
        """Fail the round at `step`; compensations of step..1 follow.

        The first failure wins; calling again (a replay, a second failing step) re-publishes
        the recorded RoundFailed.
        """
        await self.store.transition(
            round_id,
            {"status": "running"},
            {"status": "compensating", "failed_step": step, "failure_reason": reason},
        )
        state = await self.store.get_round(round_id)
        if state.get("status") in ("compensating", "failed"):
            step, reason = int(state["failed_step"]), state["failure_reason"]
            await self.emit_once("failed", RoundFailed(round_id=round_id, step=step, reason=reason))

    async def reject(self, topic: str, reason: str, round_id: str | None = None) -> None:
        """Report rejected input on `fl/errors/{service}`."""
        self.log.warning("rejected", topic=topic, reason=reason, round_id=round_id)
        report = ErrorReport(service=self.service, topic=topic, reason=reason, round_id=round_id)
        await self.publish(topics.errors(self.service), report)

    def check_device(self, device_id: str) -> None:
        """Reject a device message whose device id differs from its topic's."""
        if topics.device_of(self.topic) != device_id:
            raise Rejected(f"device_id {device_id} does not match topic {self.topic}")

    async def schedule(self, round_id: str, tag: str, at_ms: int) -> None:
        """Run this service's timer `tag` for the round at `at_ms` (survives restarts)."""
        await self.store.schedule(self.service, round_id, tag, at_ms)


@dataclass
class Service:
    """One saga service: routes, timers and (for a step) its compensation."""

    name: str
    routes: list[Route]
    step: int | None = None
    compensate: Compensation | None = None
    timers: TimerHandler | None = None
    # Runs after each (re)connect, once the journal is replayed: catch up on Redis state.
    on_connect: Callable[[Context], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        if self.step is not None and self.compensate is not None:
            self.routes = [
                *self.routes,
                Route(topics.round_filter(RoundFailed.topic_name), RoundFailed, self._on_failed),
            ]
            if self.step < 6:
                self.routes.append(
                    Route(
                        topics.compensated_filter(self.step + 1),
                        StepCompensated,
                        self._on_compensated,
                    )
                )

    async def _on_failed(self, event: RoundFailed, ctx: Context) -> None:
        if event.step == self.step:
            await self._run_compensation(event.round_id, ctx)

    async def _on_compensated(self, event: StepCompensated, ctx: Context) -> None:
        await self._run_compensation(event.round_id, ctx)

    async def _run_compensation(self, round_id: str, ctx: Context) -> None:
        assert self.compensate is not None
        assert self.step is not None
        state = await ctx.store.get_round(round_id)
        if state.get("status") not in ("compensating", "failed"):
            raise Rejected(f"round {round_id} is {state.get('status', 'unknown')}, not failing")
        if self.step > int(state["failed_step"]):
            raise Rejected(f"round {round_id} failed at step {state['failed_step']}")
        key = f"compensated_{self.step}"
        if await ctx.republish(round_id, key, StepCompensated) is not None:
            return  # a redelivery: this step's compensation already ran
        detail = await self.compensate(round_id, ctx)  # idempotent actions
        await ctx.emit_once(
            key,
            StepCompensated(round_id=round_id, step=self.step, service=self.name, detail=detail),
        )

    # -- the loop ---------------------------------------------------------------------------

    def _subscriptions(self, settings: Settings) -> list[str]:
        filters = dict.fromkeys(r.topic for r in self.routes)
        if settings.shared:
            return [f"$share/{self.name}/{f}" for f in filters]
        return list(filters)

    async def dispatch(self, message: aiomqtt.Message, ctx: Context) -> None:
        """Journal one message in Redis, handle it, then drop it from the journal.

        paho acknowledges a QoS 1 message as it arrives, before any handler runs; the journal
        is what lets a service killed (or cut from the broker) mid-handler finish the job when
        it comes back (`replay`). Handlers are idempotent, so a replay is safe.
        """
        topic = message.topic.value
        route = self._route(topic)
        if route is None:
            return
        payload = message.payload if isinstance(message.payload, bytes) else b""
        entry = await ctx.store.journal_add(self.name, ctx.settings.instance, topic, payload)
        await self._handle(route, topic, payload, ctx)
        await ctx.store.journal_remove(self.name, ctx.settings.instance, entry)

    async def replay(self, ctx: Context) -> int:
        """Handle again whatever the journal says was in flight when we last stopped."""
        entries = await ctx.store.journal(self.name, ctx.settings.instance)
        for entry, topic, payload in entries:
            route = self._route(topic)
            if route is not None:
                log.info("replaying in-flight message", topic=topic)
                await self._handle(route, topic, payload, ctx)
            await ctx.store.journal_remove(self.name, ctx.settings.instance, entry)
        return len(entries)

    def _route(self, topic: str) -> Route | None:
        return next((r for r in self.routes if aiomqtt.Topic(topic).matches(r.topic)), None)

    async def _handle(self, route: Route, topic: str, payload: bytes, ctx: Context) -> None:
        """Decode, dedupe and call the handler under the runtime's error policy."""
        try:
            obj = decode_any(payload, route.model)
        except DecodeError as exc:
            await ctx.reject(topic, f"invalid payload: {exc.reason}")
            return
        msg_id = getattr(obj, "msg_id", None)
        round_id = getattr(obj, "round_id", None)
        if msg_id and await ctx.store.seen(self.name, msg_id):
            log.debug("duplicate", topic=topic, msg_id=msg_id)
            return
        ctx.topic = topic
        with structlog.contextvars.bound_contextvars(round_id=round_id, topic=topic):
            try:
                await route.handler(obj, ctx)
            except Rejected as exc:
                await ctx.reject(topic, exc.reason, round_id)
            except aiomqtt.MqttError:
                raise  # the connection is gone: the journal keeps the message for replay
            except Exception as exc:
                log.exception("handler failed")
                await ctx.reject(topic, f"internal error: {type(exc).__name__}: {exc}", round_id)
        if msg_id:
            await ctx.store.mark_seen(self.name, msg_id)

    async def _timer_loop(self, ctx: Context) -> None:
        assert self.timers is not None
        while True:
            try:
                for round_id, tag, lease in await ctx.store.claim_due(self.name, now_ms()):
                    with structlog.contextvars.bound_contextvars(round_id=round_id, timer=tag):
                        try:
                            await self.timers(round_id, tag, ctx)
                        except aiomqtt.MqttError:
                            continue  # the lease lapses and the timer fires again
                        except Exception:
                            log.exception("timer failed; it fires again when its lease lapses")
                            continue
                        await ctx.store.finish_timer(self.name, round_id, tag, lease)
            except Exception:  # Redis unreachable, say: keep the loop alive
                log.exception("timer loop error")
            await asyncio.sleep(ctx.settings.timer_poll_ms / 1000)

    async def run(self, settings: Settings, *, ready: asyncio.Event | None = None) -> None:
        """Serve forever, reconnecting to the broker whenever the connection drops."""
        store = SagaStore.from_url(settings.redis_url, ttl_s=settings.key_ttl_s)
        ctx = Context(service=self.name, settings=settings, store=store)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = settings.session_expiry_s
        backoff = 0.2
        try:
            while True:
                try:
                    async with aiomqtt.Client(
                        settings.mqtt_host,
                        settings.mqtt_port,
                        identifier=f"fedsaga-{self.name}-{settings.instance}",
                        protocol=ProtocolVersion.V5,
                        clean_start=False,  # keep the broker session across restarts
                        properties=props,
                        keepalive=15,
                        timeout=5,  # a publish into a dead connection fails within 5 s
                        **settings.mqtt_options(),
                    ) as client:
                        ctx.client = client
                        for sub in self._subscriptions(settings):
                            await client.subscribe(sub, qos=1)
                        replayed = await self.replay(ctx)
                        if self.on_connect is not None:
                            await self.on_connect(ctx)
                        log.info("serving", subscriptions=len(self.routes), replayed=replayed)
                        if ready is not None:
                            ready.set()
                        backoff = 0.2
                        async with contextlib.AsyncExitStack() as stack:
                            if self.timers is not None:
                                task = asyncio.create_task(self._timer_loop(ctx))
                                stack.callback(task.cancel)
                            async for message in client.messages:
                                await self.dispatch(message, ctx)
                except (aiomqtt.MqttError, RedisConnectionError, RedisTimeoutError) as exc:
                    # Either server gone: the journal keeps what was in flight; retry.
                    ctx.client = None
                    log.warning("connection lost", error=str(exc), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            await store.aclose()
