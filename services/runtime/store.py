"""Saga state in Redis: rounds, leases, the device registry, model blobs and the registry.

Transitions are optimistic (WATCH/MULTI/EXEC, as arq's `enqueue_job`): a transition states
what it expects to find and applies only if it does, so a redelivered event changes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from federated.params import Params, digest
from schemas.base import now_ms
from schemas.codec import encode, pack, unpack
from schemas.device import DeviceStatus
from schemas.events import Event
from services.runtime import keys
from services.runtime.errors import SagaConflict

E = TypeVar("E", bound=Event)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_HCAS = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1
end
return 0
"""
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) return 1
end
return 0
"""
_UNCLAIM = """
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""
_WATCH_RETRIES = 20


def _s(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _plain(fields: Mapping[str, Any]) -> dict[str, str | int]:
    # IntEnum members would be written as their repr by redis-py on Python 3.11.
    return {k: int(v) if isinstance(v, int) else v for k, v in fields.items()}


def _hash(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class SagaStore:
    """All Redis access of the services goes through here."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._release = redis.register_script(_RELEASE)
        self._hcas = redis.register_script(_HCAS)
        self._claim = redis.register_script(_CLAIM)
        self._unclaim = redis.register_script(_UNCLAIM)

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int = 7 * 24 * 3600) -> SagaStore:
        """Connect (lazily) to the Redis at `url`."""
        return cls(aioredis.Redis.from_url(url, decode_responses=False), ttl_s=ttl_s)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    # -- rounds -----------------------------------------------------------------------------

    async def create_round(self, round_id: str, fields: Mapping[str, str | int]) -> bool:
        """Create the round hash unless it exists; True when this call created it."""
        key = keys.round_hash(round_id)
        created = await self.redis.hsetnx(key, "created_ms", now_ms())
        if not created:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=_plain(fields))
            pipe.expire(key, self.ttl_s)
            pipe.zadd(keys.rounds(), {round_id: now_ms()})
            await pipe.execute()
        return True

    async def get_round(self, round_id: str) -> dict[str, str]:
        """The round hash as strings (empty when the round is unknown)."""
        return _hash(await self.redis.hgetall(keys.round_hash(round_id)))

    async def request_of(self, round_id: str) -> dict[str, Any]:
        """The round's original request as a dict."""
        raw = await self.redis.hget(keys.round_hash(round_id), "request")
        return json.loads(raw) if raw else {}

    async def transition(
        self, round_id: str, expect: Mapping[str, str | None], updates: Mapping[str, str | int]
    ) -> bool:
        """Apply `updates` if every field in `expect` has that value (None: absent)."""
        key = keys.round_hash(round_id)
        for _ in range(_WATCH_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = _hash(await pipe.hgetall(key))
                    if not current or any(current.get(f) != v for f, v in expect.items()):
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping={**_plain(updates), "updated_ms": now_ms()})
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise SagaConflict(f"round {round_id}: transition kept conflicting")

    async def record_outcome(self, round_id: str, key: str, event: E) -> tuple[E, bool]:
        """Record an event as the round's outcome `key` unless one is recorded already.

        Returns the recorded event (ours or the earlier one) and whether ours was recorded.
        """
        field = f"out:{key}"
        first = await self.hsetnx(keys.round_hash(round_id), field, event.model_dump_json())
        if first:
            return event, True
        recorded = await self.outcome(round_id, key, type(event))
        assert recorded is not None
        return recorded, False

    async def outcome(self, round_id: str, key: str, model: type[E]) -> E | None:
        """The event recorded as the round's outcome `key`, if any."""
        raw = await self.redis.hget(keys.round_hash(round_id), f"out:{key}")
        return model.model_validate_json(raw) if raw else None

    async def set_fields(self, round_id: str, **fields: str | int) -> None:
        """Set round fields unconditionally (for values only one step writes)."""
        await self.redis.hset(keys.round_hash(round_id), mapping=_plain(fields))

    async def mark_once(self, round_id: str, flag: str) -> bool:
        """Set a one-shot flag on the round; True the first time only."""
        return bool(await self.redis.hsetnx(keys.round_hash(round_id), flag, now_ms()))

    async def incr(self, round_id: str, field: str, amount: int = 1) -> int:
        """Add to a round counter."""
        return int(await self.redis.hincrby(keys.round_hash(round_id), field, amount))

    async def append_event(self, round_id: str, service: str, event: Event) -> None:
        """Append an event to the round's audit log (bulky fields left out)."""
        body = event.model_dump(mode="json", exclude={"request", "blob"})
        key = keys.round_events(round_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"kind": event.kind, "service": service, "event": json.dumps(body)})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def events(self, round_id: str) -> list[dict[str, Any]]:
        """The round's audit log, oldest first."""
        out = []
        for entry_id, fields in await self.redis.xrange(keys.round_events(round_id)):
            f = _hash(fields)
            out.append(
                {
                    "id": _s(entry_id),
                    "kind": f["kind"],
                    "service": f["service"],
                    **json.loads(f["event"]),
                }
            )
        return out

    async def last_event_kind(self, round_id: str) -> str | None:
        """Kind of the newest event in the round's log."""
        last = await self.redis.xrevrange(keys.round_events(round_id), count=1)
        return last[0][1][b"kind"].decode() if last else None

    async def rounds(self) -> list[str]:
        """Every known round id, oldest first."""
        return [r.decode() for r in await self.redis.zrange(keys.rounds(), 0, -1)]

    # -- sets and hashes scoped to a round ----------------------------------------------------

    async def sadd(self, key: str, *members: str) -> int:
        """Add to a round-scoped set (with the round TTL)."""
        if not members:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, *members)
            pipe.expire(key, self.ttl_s)
            added, _ = await pipe.execute()
        return int(added)

    async def smembers(self, key: str) -> list[str]:
        """Members of a set, sorted."""
        return sorted(m.decode() for m in await self.redis.smembers(key))

    async def hset(self, key: str, mapping: Mapping[str, str | int]) -> None:
        """Write a round-scoped hash (with the round TTL)."""
        if not mapping:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=dict(mapping))
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def hsetnx(self, key: str, field: str, value: str) -> bool:
        """Set a hash field only if absent; True when this call set it."""
        ok = bool(await self.redis.hsetnx(key, field, value))
        if ok:
            await self.redis.expire(key, self.ttl_s)
        return ok

    async def hcas(self, key: str, field: str, expect: str, value: str) -> bool:
        """Compare-and-set one hash field atomically; True when it was `expect`."""
        return bool(await self._hcas(keys=[key], args=[field, expect, value]))

    async def hgetall(self, key: str) -> dict[str, str]:
        """A hash as strings."""
        return _hash(await self.redis.hgetall(key))

    # -- leases -----------------------------------------------------------------------------

    async def lease(self, device_id: str, round_id: str, ttl_ms: int) -> bool:
        """Lease a device to a round unless another round holds it; idempotent per round."""
        if await self.redis.set(keys.lease(device_id), round_id, nx=True, px=ttl_ms):
            return True
        return _s(await self.redis.get(keys.lease(device_id))) == round_id

    async def release(self, device_id: str, round_id: str) -> bool:
        """Release a device's lease if this round holds it."""
        return bool(await self._release(keys=[keys.lease(device_id)], args=[round_id]))

    async def lease_owner(self, device_id: str) -> str | None:
        """The round a device is leased to, if any."""
        return _s(await self.redis.get(keys.lease(device_id)))

    # -- device registry ------------------------------------------------------------------------

    async def put_device(self, status: DeviceStatus) -> None:
        """Record a device's latest status."""
        await self.redis.hset(keys.devices(), status.device_id, encode(status))

    async def devices(self) -> list[DeviceStatus]:
        """Every registered device's latest status."""
        raw = await self.redis.hgetall(keys.devices())
        return [DeviceStatus.model_validate(unpack(v)) for v in raw.values()]

    async def device(self, device_id: str) -> DeviceStatus | None:
        """One device's latest status."""
        raw = await self.redis.hget(keys.devices(), device_id)
        return DeviceStatus.model_validate(unpack(raw)) if raw else None

    # -- model blobs (content-addressed) ----------------------------------------------------------

    async def put_params(self, params: Params, *, persist: bool = False) -> str:
        """Store weights under their digest; returns the digest."""
        d = digest(params)
        data = encode_params(params)
        if persist:
            await self.redis.set(keys.blob(d), data)
        else:
            await self.redis.set(keys.blob(d), data, ex=self.ttl_s)
        return d

    async def has_params(self, d: str) -> bool:
        """Whether weights with this digest are stored."""
        return bool(await self.redis.exists(keys.blob(d)))

    async def persist_params(self, d: str) -> None:
        """Keep a blob for good (it became a registered version)."""
        await self.redis.persist(keys.blob(d))

    async def get_params(self, d: str) -> Params | None:
        """Weights by digest, verified; None when unknown."""
        raw = await self.redis.get(keys.blob(d))
        if raw is None:
            return None
        params = decode_params(raw)
        if digest(params) != d:
            raise ValueError(f"blob {d} is corrupt")
        return params

    # -- model registry ---------------------------------------------------------------------

    async def register_version(self, model: str, ver: str, fields: Mapping[str, str]) -> bool:
        """Register a model version once; True when this call registered it."""
        key = keys.version(model, ver)
        if not await self.redis.hsetnx(key, "created_ms", now_ms()):
            return False
        await self.redis.hset(key, mapping=dict(fields))
        await self.redis.zadd(keys.versions(model), {ver: now_ms()})
        return True

    async def update_version(self, model: str, ver: str, **fields: str) -> None:
        """Change a registered version's status or metrics."""
        await self.redis.hset(keys.version(model, ver), mapping=fields)

    async def get_version(self, model: str, ver: str) -> dict[str, str]:
        """One version's record (empty when unknown)."""
        return _hash(await self.redis.hgetall(keys.version(model, ver)))

    async def versions(self, model: str) -> list[str]:
        """Registered versions of a model, oldest first."""
        return [v.decode() for v in await self.redis.zrange(keys.versions(model), 0, -1)]

    async def active_version(self, model: str) -> str | None:
        """The version deployed to the fleet."""
        return _s(await self.redis.get(keys.active_version(model)))

    async def set_active_version(self, model: str, ver: str) -> None:
        """Make a version the fleet's active one."""
        await self.redis.set(keys.active_version(model), ver)

    # -- at-least-once dedupe and timers -------------------------------------------------------

    async def journal_add(self, service: str, instance: str, topic: str, payload: bytes) -> str:
        """Record a message as in flight for this service instance; returns its entry id."""
        entry = uuid.uuid4().hex
        key = keys.inflight(service, instance)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, entry, pack([now_ms(), topic, payload]))
            pipe.expire(key, self.ttl_s)
            await pipe.execute()
        return entry

    async def journal_remove(self, service: str, instance: str, entry: str) -> None:
        """The message is handled: forget it."""
        await self.redis.hdel(keys.inflight(service, instance), entry)

    async def journal(self, service: str, instance: str) -> list[tuple[str, str, bytes]]:
        """Messages in flight when this instance last stopped, oldest first."""
        raw = await self.redis.hgetall(keys.inflight(service, instance))
        items = sorted((unpack(v), k.decode()) for k, v in raw.items())
        return [(entry, topic, payload) for (_, topic, payload), entry in items]

    async def seen(self, service: str, msg_id: str) -> bool:
        """Whether this service already handled the message."""
        return bool(await self.redis.exists(keys.seen(service, msg_id)))

    async def mark_seen(self, service: str, msg_id: str) -> None:
        """Remember a handled message for a day."""
        await self.redis.set(keys.seen(service, msg_id), 1, ex=24 * 3600)

    async def schedule(self, service: str, round_id: str, tag: str, at_ms: int) -> None:
        """Schedule `service`'s timer `tag` for a round at `at_ms`."""
        await self.redis.zadd(keys.timers(service), {f"{round_id}|{tag}": at_ms})

    async def cancel(self, service: str, round_id: str, tag: str) -> None:
        """Cancel a scheduled timer."""
        await self.redis.zrem(keys.timers(service), f"{round_id}|{tag}")

    async def claim_due(
        self, service: str, now: int, lease_ms: int = 30_000
    ) -> list[tuple[str, str, int]]:
        """Claim due timers for `lease_ms`: each goes to exactly one instance.

        A claimed timer is not removed but pushed `lease_ms` ahead, so if the claimant dies
        before `finish_timer`, the timer fires again after the lease. Returns
        (round_id, tag, lease score) triples.
        """
        due = await self.redis.zrangebyscore(keys.timers(service), "-inf", now, start=0, num=100)
        claimed = []
        for member in due:
            lease = now + lease_ms
            if await self._claim(keys=[keys.timers(service)], args=[member, now, lease]):
                round_id, _, tag = member.decode().partition("|")
                claimed.append((round_id, tag, lease))
        return claimed

    async def finish_timer(self, service: str, round_id: str, tag: str, lease: int) -> None:
        """Drop a timer that fired, unless its handler scheduled it again."""
        await self._unclaim(keys=[keys.timers(service)], args=[f"{round_id}|{tag}", lease])


def encode_params(params: Params) -> bytes:
    """Weights as msgpack of raw arrays (never pickle)."""
    return pack(dict(params))


def decode_params(raw: bytes) -> Params:
    """Inverse of `encode_params`."""
    obj = unpack(raw)
    return {k: v.copy() for k, v in obj.items()}
