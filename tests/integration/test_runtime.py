"""The service runtime's delivery guarantees, on the real broker and Redis.

A service is run in this process with handlers that fail on purpose, so each rule of the
error policy (services/runtime/policy.py) is seen end to end: acknowledged only once handled
or journaled, retried with backoff, dead-lettered with its reason, rejected input final.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiomqtt
import pytest

from deploy.stack import LocalStack
from schemas.codec import decode, encode
from schemas.events import ErrorReport
from services.runtime import Context, Rejected, Route, SagaConflict, SagaStore, Service, Settings
from services.runtime.policy import RetryPolicy
from tests.integration.conftest import mqtt_client

Handler = Callable[[ErrorReport, Context], Awaitable[None]]


class Harness:
    """One throwaway service on the test stack's servers, and a client to talk to it."""

    def __init__(self, stack: LocalStack, client: aiomqtt.Client) -> None:
        self.name = f"rt-{uuid.uuid4().hex[:8]}"
        self.topic = f"test/{self.name}/in"
        self.ping = f"test/{self.name}/ping"
        self.ready = asyncio.Event()
        self.settings = Settings(
            mqtt_host=stack.settings.mqtt_host,
            mqtt_port=stack.settings.mqtt_port,
            redis_url=stack.settings.redis_url,
        )
        self.client = client
        self.store = SagaStore.from_url(self.settings.redis_url)
        self.errors: list[ErrorReport] = []

    def service(self, handler: Handler, retry: RetryPolicy | None = None) -> Service:
        """The service under test: `handler` on its topic, and a ping route to see it serve."""
        ready = self.ready = asyncio.Event()

        async def on_ping(message: ErrorReport, ctx: Context) -> None:
            ready.set()

        routes = [Route(self.topic, ErrorReport, handler), Route(self.ping, ErrorReport, on_ping)]
        return Service(self.name, routes, retry=retry or RetryPolicy(base_ms=20))

    @contextlib.asynccontextmanager
    async def running(self, service: Service) -> AsyncIterator[None]:
        """Run the service until the block ends, then cancel it (as a crash would)."""
        task = asyncio.create_task(service.run(self.settings))
        try:
            async with asyncio.timeout(10):
                while not self.ready.is_set():  # pings before it subscribed are not kept
                    await self.client.publish(self.ping, encode(_message(self.ping)), qos=1)
                    await asyncio.sleep(0.1)
            yield
        finally:
            task.cancel()
            # asyncio.wait, not `await task`: it neither raises the task's cancellation nor
            # swallows one aimed at this test, and it bounds the wait.
            done, _ = await asyncio.wait({task}, timeout=15)
            assert done, "the service did not stop within 15 s of being cancelled"

    async def send(self, reason: str) -> ErrorReport:
        """Publish one message for the service (QoS 1)."""
        message = _message(self.topic, reason)
        await self.client.publish(self.topic, encode(message), qos=1)
        return message


def _message(topic: str, reason: str = "ping") -> ErrorReport:
    return ErrorReport(service="test", topic=topic, reason=reason)


@pytest.fixture
async def harness(stack: LocalStack) -> AsyncIterator[Harness]:
    """A harness with a client that also records the service's error reports."""
    async with mqtt_client(stack, "rt-probe") as client:
        h = Harness(stack, client)
        await client.subscribe(f"fl/errors/{h.name}", qos=1)

        async def read() -> None:
            async for message in client.messages:
                h.errors.append(decode(bytes(message.payload), ErrorReport))  # type: ignore[arg-type]

        reader = asyncio.create_task(read())
        yield h
        reader.cancel()
        await h.store.aclose()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `check()` holds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_transient_failure_is_retried_from_the_journal(harness: Harness) -> None:
    # Prepare: a handler that loses its optimistic transaction twice
    calls: list[str] = []

    async def flaky(message: ErrorReport, ctx: Context) -> None:
        calls.append(message.reason)
        if len(calls) < 3:
            raise SagaConflict("lost the race")

    # Execute
    async with harness.running(harness.service(flaky)):
        await harness.send("m1")
        await until(lambda: len(calls) == 3)
        await asyncio.sleep(0.3)  # time for a fourth call, should there be one

    # Assert: handled on the third try, nothing left in flight, nothing reported
    assert calls == ["m1", "m1", "m1"]
    assert await harness.store.journal(harness.name, "0") == []
    assert await harness.store.dead_letters(harness.name) == []
    assert harness.errors == []


async def test_a_message_that_keeps_failing_becomes_a_dead_letter(harness: Harness) -> None:
    calls: list[str] = []

    async def broken(message: ErrorReport, ctx: Context) -> None:
        calls.append(message.reason)
        raise RuntimeError("boom")

    service = harness.service(broken, RetryPolicy(max_attempts=3, base_ms=20))
    async with harness.running(service):
        await harness.send("m1")
        await until(lambda: len(harness.errors) == 1)
        await asyncio.sleep(0.3)

    assert calls == ["m1"] * 3
    (letter,) = await harness.store.dead_letters(harness.name)
    assert letter["topic"] == harness.topic
    assert letter["attempts"] == "3"
    assert letter["error"] == "RuntimeError: boom"
    assert harness.errors[0].reason == "dead letter after 3 attempts: RuntimeError: boom"
    assert await harness.store.journal(harness.name, "0") == []


async def test_rejected_input_is_reported_once_and_never_retried(harness: Harness) -> None:
    calls: list[str] = []

    async def refuses(message: ErrorReport, ctx: Context) -> None:
        calls.append(message.reason)
        raise Rejected(f"no thanks to {message.reason}")

    async with harness.running(harness.service(refuses)):
        await harness.send("m1")
        await harness.client.publish(harness.topic, b"\xc1 not msgpack", qos=1)
        await until(lambda: len(harness.errors) == 2)
        await asyncio.sleep(0.3)

    assert calls == ["m1"]
    reasons = sorted(e.reason for e in harness.errors)
    assert reasons[0].startswith("invalid payload")
    assert reasons[1] == "no thanks to m1"
    assert await harness.store.journal(harness.name, "0") == []
    assert await harness.store.dead_letters(harness.name) == []


async def test_messages_queued_when_a_service_dies_are_delivered_after_it_restarts(
    harness: Harness,
) -> None:
    # Prepare: a slow handler, so that most of a burst waits in the client's queue
    handled: list[str] = []

    async def slow(message: ErrorReport, ctx: Context) -> None:
        await asyncio.sleep(0.1)
        handled.append(message.reason)

    burst = [f"m{i}" for i in range(20)]

    # Execute: the service dies (its task is cancelled) after a few messages ...
    async with harness.running(harness.service(slow)):
        for reason in burst:
            await harness.send(reason)
        await until(lambda: len(handled) >= 3)
    died_after = len(handled)

    # ... and a new process with the same identity takes its session over
    async with harness.running(harness.service(slow)):
        await until(lambda: len(handled) >= len(burst), timeout=15)
        await asyncio.sleep(0.5)  # time for a duplicate, should there be one

    # Assert: every message handled exactly once; when paho acknowledged on arrival, the
    # queued ones were lost with the process
    assert died_after < len(burst)
    assert sorted(handled) == sorted(burst)
    assert await harness.store.journal(harness.name, "0") == []
