"""The retry journal, dead letters, the handled-message marks and instance identities.

A message whose handling failed for a retryable reason is written here before the broker gets
its acknowledgement, with its attempt count and when to try it next, and forgotten once
handled; one that keeps failing moves to the service's dead letters, with its reason, for an
operator to see. A message handled at the first try never comes here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from schemas.base import now_ms
from schemas.codec import pack, unpack
from services.runtime import keys
from services.runtime.store._base import (
    StoreBase,
    raw_hash,
    raws,
    raws_opt,
    stream_entries,
    text,
    text_hash,
)

DEAD_LETTERS_KEPT = 10_000

# Set the holder unless another holds it (or, with ARGV[3], unless one other than the holder
# seen gone, ARGV[3], holds it); refresh it when we hold it. Returns the holder afterwards.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] or (ARGV[3] ~= '' and current == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return current
"""
# Delete the key only if we hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class InFlight:
    """One journaled message."""

    entry: str
    topic: str
    payload: bytes
    first_ms: int
    attempts: int = 0
    error: str = ""

    @classmethod
    def new(cls, topic: str, payload: bytes) -> InFlight:
        """A message not yet tried again (the first attempt was the live one)."""
        return cls(uuid.uuid4().hex, topic, payload, now_ms())

    def failed(self, error: str) -> InFlight:
        """This message after one more failed attempt."""
        return replace(self, attempts=self.attempts + 1, error=error)

    def pack(self) -> bytes:
        """The journal's record of it."""
        return pack([self.first_ms, self.topic, self.payload, self.attempts, self.error])

    @classmethod
    def unpack(cls, entry: str, raw: bytes) -> InFlight:
        """Inverse of `pack`."""
        first_ms, topic, payload, attempts, error = unpack(raw)
        return cls(entry, topic, payload, first_ms, attempts, error)


class JournalStore(StoreBase):
    """Per service instance: what is in flight; per service: dead letters and dedupe marks."""

    async def claim_instance(
        self, identity: str, holder: str, ttl_ms: int, *, replacing: str = ""
    ) -> str:
        """Hold `identity` for `holder` for `ttl_ms`, or refresh our hold; the holder after.

        Another's hold stands, unless it is `replacing` (a holder seen gone): then only one of
        several newcomers replacing it wins.
        """
        script = self.script(_CLAIM)
        current = await script(
            keys=[keys.instance_holder(identity)], args=[holder, ttl_ms, replacing]
        )
        return text(current)

    async def release_instance(self, identity: str, holder: str) -> None:
        """Let go of `identity` if we hold it (a clean stop frees it at once)."""
        await self.script(_RELEASE)(keys=[keys.instance_holder(identity)], args=[holder])

    async def journal_retry_at(
        self, service: str, instance: str, item: InFlight, due_ms: int
    ) -> None:
        """Keep a failed message (its attempts and error updated) for another try at `due_ms`."""
        await self._put(service, instance, item, due_ms)

    async def _put(self, service: str, instance: str, item: InFlight, due_ms: int) -> None:
        journal, due = keys.inflight(service, instance), keys.inflight_due(service, instance)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(journal, item.entry, item.pack())
            pipe.zadd(due, {item.entry: due_ms})
            pipe.expire(journal, self.ttl_s)
            pipe.expire(due, self.ttl_s)
            await pipe.execute()

    async def journal_remove(self, service: str, instance: str, entry: str) -> None:
        """The message is handled (or given up on): forget it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.inflight(service, instance), entry)
            pipe.zrem(keys.inflight_due(service, instance), entry)
            await pipe.execute()

    async def journal(self, service: str, instance: str) -> list[InFlight]:
        """Every message in flight for this instance, oldest first."""
        raw = raw_hash(await self.redis.hgetall(keys.inflight(service, instance)))
        items = [InFlight.unpack(k.decode(), v) for k, v in raw.items()]
        return sorted(items, key=lambda i: (i.first_ms, i.entry))

    async def journal_due(
        self, service: str, instance: str, now: int, limit: int = 20
    ) -> list[InFlight]:
        """Messages whose next try is due, oldest due first."""
        due_key = keys.inflight_due(service, instance)
        entries = raws(await self.redis.zrangebyscore(due_key, "-inf", now, start=0, num=limit))
        if not entries:
            return []
        raw = raws_opt(await self.redis.hmget(keys.inflight(service, instance), entries))
        found = [InFlight.unpack(e.decode(), r) for e, r in zip(entries, raw, strict=True) if r]
        if len(found) < len(entries):  # due marks whose record is gone: drop them
            gone = [e for e, r in zip(entries, raw, strict=True) if not r]
            await self.redis.zrem(due_key, *gone)
        return found

    async def dead_letter(self, service: str, instance: str, item: InFlight) -> None:
        """Give up on a message: keep it, with its last error, among the dead letters."""
        # One transaction: a message is in the journal or among the dead letters, never in
        # both nor in neither. The service's journals and dead letters share its `{service}`
        # tag (one slot on a cluster), as the journal and its due marks do in `_put`.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                keys.dead_letters(service),
                {
                    "topic": item.topic,
                    "payload": item.payload,
                    "attempts": item.attempts,
                    "error": item.error,
                    "first_ms": item.first_ms,
                    "instance": instance,
                },
                maxlen=DEAD_LETTERS_KEPT,
                approximate=True,
            )
            pipe.hdel(keys.inflight(service, instance), item.entry)
            pipe.zrem(keys.inflight_due(service, instance), item.entry)
            await pipe.execute()

    async def dead_letters(self, service: str, count: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of a service, newest first (payloads left out)."""
        out = []
        entries = await self.redis.xrevrange(keys.dead_letters(service), count=count)
        for entry_id, raw in stream_entries(entries):
            payload = raw.pop(b"payload", b"")
            out.append({"id": entry_id.decode(), **text_hash(raw), "bytes": len(payload)})
        return out

    async def seen(self, service: str, msg_id: str) -> bool:
        """Whether this service already handled the message."""
        return bool(await self.redis.exists(keys.seen(service, msg_id)))

    async def mark_seen(self, service: str, msg_id: str) -> None:
        """Remember a handled message for a day."""
        await self.redis.set(keys.seen(service, msg_id), 1, ex=24 * 3600)
