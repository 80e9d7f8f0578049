"""Service identities held in a real Redis: one winner among newcomers, a lost hold ends it."""

from __future__ import annotations

import asyncio

import pytest

from deploy.stack import LocalStack
from services.runtime import keys
from services.runtime.identity import HOLD_MS, IdentityTaken, hold, this_process
from services.runtime.store import SagaStore


@pytest.fixture
async def store(stack: LocalStack, clean_redis: None) -> SagaStore:
    s = SagaStore.from_url(stack.settings.redis_url)
    yield s  # type: ignore[misc]
    await s.aclose()


async def test_of_two_newcomers_replacing_a_dead_holder_one_wins(store: SagaStore) -> None:
    # Prepare: a holder killed with kill -9 (its hold has not lapsed yet)
    dead = "h1:4242:1"
    assert await store.claim_instance("fedsaga-x-0", dead, HOLD_MS) == dead

    # Execute: two restarted processes take over at the same moment
    results = await asyncio.gather(
        *(store.claim_instance("fedsaga-x-0", f"h1:{p}:9", HOLD_MS, replacing=dead) for p in (7, 8))
    )

    # Assert: both see the same single winner
    assert results[0] == results[1]
    assert results[0] in ("h1:7:9", "h1:8:9")


async def test_a_hold_taken_by_another_process_ends_the_service(store: SagaStore) -> None:
    # Prepare: this process holds the identity
    ready = asyncio.Event()
    task = asyncio.create_task(hold(store, "fedsaga-y-0", ready))
    await asyncio.wait_for(ready.wait(), 5)
    assert await store.redis.get(keys.instance_holder("fedsaga-y-0")) == this_process().encode()

    # Execute: another host's process takes it (say Redis lost it and the other claimed it)
    await store.redis.set(keys.instance_holder("fedsaga-y-0"), "elsewhere:1:1")

    # Assert: the next refresh ends the hold, saying who holds it now
    with pytest.raises(IdentityTaken, match="pid 1 on elsewhere"):
        await asyncio.wait_for(task, HOLD_MS / 1000)
