"""Rounds: each round's hash, its audit log, its outcome records and its scoped sets.

Transitions are optimistic (WATCH/MULTI/EXEC, as arq's `enqueue_job`): a transition states
what it expects to find and applies only if it does, so a redelivered event changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from redis.exceptions import WatchError

from schemas.base import now_ms
from schemas.events import Event
from schemas.ops import RoundRequested
from schemas.steps import Step
from services.runtime import keys
from services.runtime.errors import SagaConflict, StaleRound
from services.runtime.state import Field, RoundState, outcome_field
from services.runtime.store._base import (
    StoreBase,
    plain,
    stream_entries,
    text,
    text_hash,
    text_opt,
    texts,
)

E = TypeVar("E", bound=Event)

_HCAS = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1
end
return 0
"""
# A round's hash, created whole or not at all (a replay finds it complete).
# KEYS: round hash. ARGV: ttl, created-ms field, now ms, field, value, ...
# -> {1 created or 0 existed, its creation time}
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then
  return {0, redis.call('HGET', KEYS[1], ARGV[2])}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {1, ARGV[3]}
"""
# The audit log and the msg_ids in it share the round's hash tag (one slot on a cluster).
_APPEND_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'kind', ARGV[3], 'service', ARGV[4], 'event', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# A round's sets and hashes are written with their TTL by scripts rather than MULTI: on a
# Redis Cluster redis-py (8.1) runs each command queued in a MULTI in a thread of its own,
# blocking the event loop: 1.1 ms a MULTI of two commands (p90 6 ms on this loaded machine)
# against 0.13 ms on one server, while a script costs the same on both (0.08 ms). The
# selector adds a cohort one device at a time. Lua's unpack takes ~8,000 values at most, so
# members and fields go in chunks (of an even count, keeping field-value pairs whole).
# KEYS: a set. ARGV: ttl, members... -> how many were new
_SADD = """
local added = 0
for i = 2, #ARGV, 1000 do
  added = added + redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return added
"""
# KEYS: a hash. ARGV: ttl, field, value, ...
_HSET = """
for i = 2, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS: round hash. ARGV: field, value -> the value that stands (ours or an earlier one)
_SET_ONCE = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""
_WATCH_RETRIES = 20


class RoundStore(StoreBase):
    """A round's state, its log of events and the keys scoped to it."""

    async def create_round(self, request: RoundRequested) -> bool:
        """Create the round for a request unless it exists; True when this call created it."""
        round_id = request.round_id
        fields: dict[Field, str | int] = {
            Field.STATUS: "running",
            Field.STEP: Step.SELECT,
            Field.MODEL_NAME: request.model_name,
            Field.REQUEST: request.model_dump_json(),
            Field.REQUEST_ID: request.msg_id,
            Field.ITERATION: 0,
        }
        created, created_ms = await self.script(_CREATE)(
            keys=[keys.round_hash(round_id)],
            args=[
                self.ttl_s,
                Field.CREATED_MS,
                now_ms(),
                *(x for field, value in plain(fields).items() for x in (field, value)),
            ],
        )
        # The index of rounds is a key of no round (another slot on a cluster), so it is
        # written after the round, on its own: every call indexes the round (a replay after
        # a crash between the two as well), NX keeping its creation time. A crash can leave
        # a round not yet indexed, never an index entry without its round.
        await self.redis.zadd(keys.rounds(), {round_id: int(created_ms)}, nx=True)
        return bool(created)

    async def get_round(self, round_id: str) -> RoundState:
        """The round's state (status "unknown" when there is no such round)."""
        return RoundState.from_hash(
            round_id, text_hash(await self.redis.hgetall(keys.round_hash(round_id)))
        )

    async def request_of(self, round_id: str) -> RoundRequested:
        """The round's request, as the selector accepted it."""
        raw = await self.redis.hget(keys.round_hash(round_id), Field.REQUEST)
        if raw is None:
            raise StaleRound(f"round {round_id} is unknown")
        return RoundRequested.model_validate_json(raw)

    async def transition(
        self, round_id: str, expect: Mapping[Field, str | None], updates: Mapping[Field, str | int]
    ) -> bool:
        """Apply `updates` if every field in `expect` has that value (None: absent)."""
        key = keys.round_hash(round_id)
        for _ in range(_WATCH_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = text_hash(await pipe.hgetall(key))
                    if not current or any(current.get(f) != v for f, v in expect.items()):
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.hset(key, mapping={**plain(updates), Field.UPDATED_MS: now_ms()})
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise SagaConflict(f"round {round_id}: transition kept conflicting")

    async def record_outcome(self, round_id: str, key: str, event: E) -> tuple[E, bool]:
        """Record an event as the round's outcome `key` unless one is recorded already.

        Returns the recorded event (ours or the earlier one) and whether ours was recorded.
        """
        field = outcome_field(key)
        first = await self.hsetnx(keys.round_hash(round_id), field, event.model_dump_json())
        if first:
            return event, True
        recorded = await self.outcome(round_id, key, type(event))
        assert recorded is not None
        return recorded, False

    async def outcome(self, round_id: str, key: str, model: type[E]) -> E | None:
        """The event recorded as the round's outcome `key`, if any."""
        raw = await self.redis.hget(keys.round_hash(round_id), outcome_field(key))
        return model.model_validate_json(raw) if raw else None

    async def set_fields(self, round_id: str, fields: Mapping[str, str | int]) -> None:
        """Set round fields unconditionally (for values only one step writes).

        Name them with `state.Field` or the field templates of `services/runtime/state.py`.
        """
        await self.redis.hset(keys.round_hash(round_id), mapping=plain(fields))

    async def set_once(self, round_id: str, field: str, value: str | int) -> str:
        """Set a round field unless it is set; returns the value that stands (ours or earlier).

        For values fixed once, such as a pinned digest or a deadline: a replay gets the
        first value back instead of moving it.
        """
        standing = await self.script(_SET_ONCE)(
            keys=[keys.round_hash(round_id)], args=[field, value]
        )
        return text(standing)

    async def mark_once(self, round_id: str, flag: str) -> bool:
        """Set a one-shot flag on the round; True the first time only."""
        return bool(await self.redis.hsetnx(keys.round_hash(round_id), flag, now_ms()))

    async def incr(self, round_id: str, field: Field, amount: int = 1) -> int:
        """Add to a round counter."""
        return int(await self.redis.hincrby(keys.round_hash(round_id), field, amount))

    async def append_event(self, round_id: str, service: str, event: Event) -> bool:
        """Append an event to the round's audit log once per msg_id (bulky fields left out).

        Idempotent: the client retries a command whose connection broke, and a handler may
        run again after a crash, so an entry is keyed by the event's msg_id. True when this
        call appended it.
        """
        body = json.dumps(event.model_dump(mode="json", exclude={"request", "blob"}))
        script = self.script(_APPEND_ONCE)
        added = await script(
            keys=[keys.round_events(round_id), keys.round_logged(round_id)],
            args=[event.msg_id, self.ttl_s, event.kind, service, body],
        )
        return bool(added)

    async def events(self, round_id: str, after: str | None = None) -> list[dict[str, Any]]:
        """The round's audit log, oldest first (only entries after the entry id `after`)."""
        out = []
        start = f"({after}" if after else "-"
        for entry_id, fields in stream_entries(
            await self.redis.xrange(keys.round_events(round_id), min=start)
        ):
            f = text_hash(fields)
            out.append(
                {
                    "id": entry_id.decode(),
                    "kind": f["kind"],
                    "service": f["service"],
                    **json.loads(f["event"]),
                }
            )
        return out

    async def last_event_kind(self, round_id: str) -> str | None:
        """Kind of the newest event in the round's log."""
        last = stream_entries(await self.redis.xrevrange(keys.round_events(round_id), count=1))
        return last[0][1][b"kind"].decode() if last else None

    async def claim_round_id(self, round_id: str) -> bool:
        """Take a round id for one request; False when any client took it before."""
        key = keys.round_claimed(round_id)
        return bool(await self.redis.set(key, now_ms(), nx=True, ex=self.ttl_s))

    async def rounds(self) -> list[str]:
        """Every known round id, oldest first."""
        return texts(await self.redis.zrange(keys.rounds(), 0, -1))

    async def recent_rounds(self, limit: int) -> list[tuple[str, int]]:
        """The `limit` newest rounds as (round id, created ms), newest first."""
        rows = await self.redis.zrevrange(keys.rounds(), 0, limit - 1, withscores=True)
        return [(text(row[0]), int(row[1])) for row in rows if isinstance(row, tuple | list)]

    # -- sets and hashes scoped to a round ----------------------------------------------------

    async def sadd(self, key: str, *members: str) -> int:
        """Add to a round-scoped set (with the round TTL)."""
        if not members:
            return 0
        return int(await self.script(_SADD)(keys=[key], args=[self.ttl_s, *members]))

    async def srem(self, key: str, *members: str) -> int:
        """Remove from a round-scoped set."""
        return int(await self.redis.srem(key, *members)) if members else 0

    async def sismember(self, key: str, member: str) -> bool:
        """Whether a round-scoped set holds `member`."""
        return bool(await self.redis.sismember(key, member))

    async def hget(self, key: str, field: str) -> str | None:
        """One field of a round-scoped hash, as text."""
        return text_opt(await self.redis.hget(key, field))

    async def smembers(self, key: str) -> list[str]:
        """Members of a set, sorted."""
        return sorted(texts(await self.redis.smembers(key)))

    async def hset(self, key: str, mapping: Mapping[str, str | int]) -> None:
        """Write a round-scoped hash (with the round TTL)."""
        if not mapping:
            return
        pairs = [x for field, value in plain(mapping).items() for x in (field, value)]
        await self.script(_HSET)(keys=[key], args=[self.ttl_s, *pairs])

    async def hsetnx(self, key: str, field: str, value: str) -> bool:
        """Set a hash field only if absent; True when this call set it."""
        ok = bool(await self.redis.hsetnx(key, field, value))
        if ok:
            await self.redis.expire(key, self.ttl_s)
        return ok

    async def hcas(self, key: str, field: str, expect: str, value: str) -> bool:
        """Compare-and-set one hash field atomically; True when it was `expect`."""
        return bool(await self.script(_HCAS)(keys=[key], args=[field, expect, value]))

    async def hgetall(self, key: str) -> dict[str, str]:
        """A hash as strings."""
        return text_hash(await self.redis.hgetall(key))
