"""A service and its loop: subscribe, route, decode, dedupe, handle, acknowledge.

A service is a name and a table of routes (its compensation's routes among them, from
`saga.compensation`), optional timers and an `on_connect` catch-up. The loop owns the policy
once (`policy.py`): the broker gets a message's acknowledgement only once the message is
handled, or else kept in the journal in Redis, so a crash or a lost connection loses nothing
acknowledged (an unacknowledged message is delivered again after the reconnect). Rejected
input is final; anything else is tried again with backoff from the journal, and a message
that keeps failing becomes a dead letter. Only failures touch the journal: a message handled
at the first try costs no journal writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import structlog

from schemas import topics
from schemas.base import now_ms
from schemas.codec import decode_any
from schemas.errors import DecodeError
from services.runtime import metrics
from services.runtime.connection import ack, service_client
from services.runtime.context import Context
from services.runtime.errors import Rejected
from services.runtime.policy import CONNECTION_ERRORS, RetryPolicy, describe
from services.runtime.routes import Route
from services.runtime.settings import Settings
from services.runtime.store import InFlight, SagaStore

log = structlog.get_logger()

TimerHandler = Callable[[str, str, Context], Awaitable[None]]

RETRY_POLL_S = 0.25
PROBE_S = 5.0


@dataclass
class Service:
    """One service: routes, timers and a catch-up to run after each (re)connect."""

    name: str
    routes: Sequence[Route[Any]]
    timers: TimerHandler | None = None
    # Runs after each (re)connect, once the journal is replayed: catch up on Redis state.
    on_connect: Callable[[Context], Awaitable[None]] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def identity(self, settings: Settings) -> str:
        """This instance's MQTT client id (one broker session, one journal)."""
        return settings.service_identity(self.name)

    def subscriptions(self, settings: Settings) -> list[str]:
        """The filters to subscribe to, shared across instances when configured."""
        filters = dict.fromkeys(r.topic for r in self.routes)
        if settings.shared:
            return [f"$share/{self.name}/{f}" for f in filters]
        return list(filters)

    def route(self, topic: str) -> Route[Any] | None:
        """The first route whose filter matches `topic`."""
        return next((r for r in self.routes if aiomqtt.Topic(topic).matches(r.topic)), None)

    # -- one message --------------------------------------------------------------------------

    async def dispatch(self, message: aiomqtt.Message, ctx: Context) -> None:
        """Handle a message under the error policy, then acknowledge it to the broker.

        Acknowledgements go out in arrival order, as MQTT requires: messages are handled one
        at a time. A message that failed is acknowledged only once it is in the journal.
        """
        assert ctx.client is not None
        topic = message.topic.value
        route = self.route(topic)
        if route is not None:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                await self._handle(route, topic, bytes(payload), ctx)
            except CONNECTION_ERRORS as exc:
                # Unacknowledged, it comes again after the reconnect; journaled too, where
                # Redis is up, in case a broker restart lost it.
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await self._failed(InFlight.new(topic, bytes(payload)), exc, ctx)
                raise
            except Exception as exc:
                log.exception("handler failed", topic=topic, attempts=1)
                await self._failed(InFlight.new(topic, bytes(payload)), exc, ctx)
        ack(ctx.client, message)

    async def attempt(self, item: InFlight, ctx: Context) -> None:
        """Try a journaled message again; forget it, or keep it for a retry, or give up."""
        route = self.route(item.topic)
        try:
            if route is not None:
                await self._handle(route, item.topic, item.payload, ctx)
        except CONNECTION_ERRORS as exc:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._failed(item, exc, ctx)
            raise  # the connection is gone: reconnect, and the journal replays it
        except Exception as exc:
            log.exception("handler failed", topic=item.topic, attempts=item.attempts + 1)
            await self._failed(item, exc, ctx)
            return
        await ctx.store.journal_remove(self.name, ctx.settings.instance, item.entry)

    async def _failed(self, item: InFlight, exc: BaseException, ctx: Context) -> None:
        failed = item.failed(describe(exc))
        instance = ctx.settings.instance
        verdict = self.retry.after_failure(failed.attempts)
        self._count(item.topic, verdict)
        if verdict == "retry":
            due = now_ms() + self.retry.backoff_ms(failed.attempts)
            await ctx.store.journal_retry_at(self.name, instance, failed, due)
            log.warning(
                "will retry", topic=item.topic, attempts=failed.attempts, error=failed.error
            )
            return
        await ctx.store.dead_letter(self.name, instance, failed)
        reason = f"dead letter after {failed.attempts} attempts: {failed.error}"
        log.error("dead letter", topic=item.topic, reason=reason)
        with contextlib.suppress(*CONNECTION_ERRORS):
            await ctx.reject(item.topic, reason)

    async def _handle(self, route: Route[Any], topic: str, payload: bytes, ctx: Context) -> None:
        """Decode, dedupe and call the handler; rejected input is reported and final."""
        try:
            obj: Any = decode_any(payload, route.model)
        except DecodeError as exc:
            self._count(topic, "invalid")
            await ctx.reject(topic, f"invalid payload: {exc.reason}")
            return
        msg_id = None if route.idempotent else getattr(obj, "msg_id", None)
        round_id = getattr(obj, "round_id", None)
        if msg_id and await ctx.store.seen(self.name, msg_id):
            self._count(topic, "duplicate")
            log.debug("duplicate", topic=topic, msg_id=msg_id)
            return
        # A context of its own: the retry and timer loops handle messages concurrently.
        here = dataclasses.replace(ctx, topic=topic)
        # Whom the message concerns, for every log line the handler writes.
        about = {
            k: v
            for k in ("round_id", "iteration", "device_id")
            if (v := getattr(obj, k, None)) is not None
        }
        message = route.model.__name__
        with (
            structlog.contextvars.bound_contextvars(topic=topic, **about),
            metrics.HANDLER_SECONDS.labels(service=self.name, message=message).time(),
        ):
            try:
                await route.handler(obj, here)
            except Rejected as exc:
                self._count(topic, "rejected")
                await here.reject(topic, exc.reason, round_id)
            else:
                self._count(topic, "handled")
        if msg_id:
            await ctx.store.mark_seen(self.name, msg_id)

    def _count(self, topic: str, result: str) -> None:
        """Count a message of `topic` by what became of it (fedsaga_messages_total)."""
        route = self.route(topic)
        message = route.model.__name__ if route is not None else metrics.OTHER
        metrics.MESSAGES.labels(service=self.name, message=message, result=result).inc()

    # -- the journal ----------------------------------------------------------------------------

    async def replay(self, ctx: Context) -> int:
        """Handle again whatever the journal holds from before this (re)connect."""
        items = await ctx.store.journal(self.name, ctx.settings.instance)
        for item in items:
            log.info("replaying in-flight message", topic=item.topic, attempts=item.attempts)
            await self.attempt(item, ctx)
        return len(items)

    async def _retry_loop(self, ctx: Context) -> None:
        while True:
            await asyncio.sleep(RETRY_POLL_S)
            try:
                for item in await ctx.store.journal_due(self.name, ctx.settings.instance, now_ms()):
                    await self.attempt(item, ctx)
            except CONNECTION_ERRORS as exc:
                log.warning("retry loop: server unavailable", error=describe(exc))
            except Exception:
                log.exception("retry loop error")

    async def _timer_loop(self, ctx: Context) -> None:
        assert self.timers is not None
        while True:
            try:
                for round_id, tag, lease in await ctx.store.claim_due(self.name, now_ms()):
                    with structlog.contextvars.bound_contextvars(round_id=round_id, timer=tag):
                        try:
                            await self.timers(round_id, tag, ctx)
                        except Exception:
                            log.exception("timer failed; it fires again when its lease lapses")
                            continue
                        await ctx.store.finish_timer(self.name, round_id, tag, lease)
            except Exception:  # Redis unreachable, say: keep the loop alive
                log.exception("timer loop error")
            await asyncio.sleep(ctx.settings.timer_poll_ms / 1000)

    # -- the loop -------------------------------------------------------------------------------

    async def _consume(self, client: aiomqtt.Client, ctx: Context) -> None:
        """Dispatch messages until the connection fails, as the client or the probe finds."""
        consume = asyncio.create_task(self._dispatch_all(client, ctx))
        probe = asyncio.create_task(self._probe(client, ctx))
        try:
            done, _ = await asyncio.wait({consume, probe}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consume, probe):
                task.cancel()
            # A handler cut off here stays in the journal and is replayed on reconnect.
            await asyncio.gather(consume, probe, return_exceptions=True)
        for task in done:
            task.result()  # the MqttError (or other failure) that ended it

    async def _dispatch_all(self, client: aiomqtt.Client, ctx: Context) -> None:
        async for message in client.messages:
            await self.dispatch(message, ctx)

    async def _probe(self, client: aiomqtt.Client, ctx: Context) -> None:
        """Publish to our probe topic at QoS 1 every few seconds; raise when no PUBACK comes.

        A connection can die without the socket telling us (a half-open TCP link after a
        network partition, a broker host that vanished): reads then just wait. A publish into
        such a connection times out (the client's 5 s timeout) and the reconnect loop takes
        over, within PROBE_S plus that timeout rather than the kernel's TCP timeouts.
        """
        topic = topics.probe(self.identity(ctx.settings))
        while True:
            await asyncio.sleep(PROBE_S)
            await client.publish(topic, b"", qos=1)

    async def run(self, settings: Settings) -> None:
        """Serve forever, reconnecting whenever the broker or Redis goes away."""
        store = SagaStore.from_url(
            settings.redis_url, ttl_s=settings.key_ttl_s, name=f"fedsaga-{self.name}"
        )
        ctx = Context(service=self.name, settings=settings, store=store)
        if settings.metrics_port:
            metrics.serve(settings.metrics_port)
            log.info("metrics served", port=settings.metrics_port)
        backoff = 0.2
        try:
            while True:
                try:
                    async with service_client(settings, self.identity(settings)) as client:
                        ctx.client = client
                        for sub in self.subscriptions(settings):
                            await client.subscribe(sub, qos=1)
                        replayed = await self.replay(ctx)
                        if self.on_connect is not None:
                            await self.on_connect(ctx)
                        log.info("serving", subscriptions=len(self.routes), replayed=replayed)
                        backoff = 0.2
                        async with contextlib.AsyncExitStack() as stack:
                            loops = [self._retry_loop(ctx)]
                            if self.timers is not None:
                                loops.append(self._timer_loop(ctx))
                            for loop in loops:
                                stack.callback(asyncio.create_task(loop).cancel)
                            await self._consume(client, ctx)
                except CONNECTION_ERRORS as exc:
                    # Either server gone: unacknowledged messages stay with the broker, the
                    # journal keeps what was acknowledged; reconnect and carry on.
                    ctx.client = None
                    log.warning("connection lost", error=describe(exc), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            await store.aclose()
