"""Models: weights by content digest, and the registry of versions and the active one."""

from __future__ import annotations

from collections.abc import Mapping

from federated.params import Params, digest
from schemas.base import now_ms
from schemas.codec import pack, unpack
from services.runtime import keys
from services.runtime.store._base import (
    RELEASE_IF_OWNER,
    StoreBase,
    plain,
    raw_opt,
    text,
    text_hash,
    text_opt,
    texts,
)


def encode_params(params: Params) -> bytes:
    """Weights as msgpack of raw arrays (never pickle)."""
    return pack(dict(params))


def decode_params(raw: bytes) -> Params:
    """Inverse of `encode_params`."""
    obj = unpack(raw)
    return {k: v.copy() for k, v in obj.items()}


PARAMS_CACHED = 4  # models kept in memory by digest (a wide one is 4 MB)


class ModelStore(StoreBase):
    """Content-addressed weights and the model registry."""

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

    async def drop_params(self, d: str) -> None:
        """Delete a blob (a candidate that will never be a version)."""
        self._params.pop(d, None)
        await self.redis.delete(keys.blob(d))

    async def persist_params(self, d: str) -> None:
        """Keep a blob for good (it became a registered version)."""
        await self.redis.persist(keys.blob(d))

    async def get_params(self, d: str) -> Params | None:
        """Weights by digest, verified; None when unknown. A copy each time (callers may
        change it); the last PARAMS_CACHED read stay in memory, as a digest names one content."""
        cached: Params | None = self._params.get(d)
        if cached is None:
            raw = raw_opt(await self.redis.get(keys.blob(d)))
            if raw is None:
                return None
            cached = decode_params(raw)
            if digest(cached) != d:
                raise ValueError(f"blob {d} is corrupt")
            self._params[d] = cached
            while len(self._params) > PARAMS_CACHED:
                self._params.popitem(last=False)
        self._params.move_to_end(d)
        return {k: v.copy() for k, v in cached.items()}

    async def claim_version(self, model: str, ver: str, round_id: str) -> str:
        """Claim version `ver` of `model` for a round unless taken; returns its owner round.

        The claim is the version record's `round_id` field, set once: a round that claimed a
        number and died before finishing its record finds the number its own on a replay,
        so numbers are neither skipped nor shared.
        """
        key = keys.version(model, ver)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "round_id", round_id)
            pipe.hget(key, "round_id")
            _, owner = await pipe.execute()
        return text(owner)

    async def register_version(self, model: str, ver: str, fields: Mapping[str, str]) -> None:
        """Write a claimed version's record and index it (idempotent: a replay completes it).

        The record is written whole, in one transaction on its own key. The model's index of
        versions and the index of models are other keys (other slots on a cluster), so they
        follow, each idempotent: a crash between leaves a complete record that the replay
        indexes, never an index entry without its record. Version numbers are claimed by
        their records (`claim_version`), so an unindexed record still holds its number.
        """
        key = keys.version(model, ver)
        created = now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "created_ms", created)
            pipe.hset(key, mapping=plain(fields))
            await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.versions(model), {ver: created}, nx=True)
            pipe.sadd(keys.models(), model)
            await pipe.execute()

    async def update_version(self, model: str, ver: str, **fields: str) -> None:
        """Change a registered version's status or metrics."""
        await self.redis.hset(keys.version(model, ver), mapping=plain(fields))

    async def get_version(self, model: str, ver: str) -> dict[str, str]:
        """One version's record (empty when unknown)."""
        return text_hash(await self.redis.hgetall(keys.version(model, ver)))

    async def model_names(self) -> list[str]:
        """Every model with a registered version, by name."""
        return sorted(texts(await self.redis.smembers(keys.models())))

    async def versions(self, model: str) -> list[str]:
        """Registered versions of a model, oldest first."""
        return texts(await self.redis.zrange(keys.versions(model), 0, -1))

    async def active_version(self, model: str) -> str | None:
        """The version deployed to the fleet."""
        return text_opt(await self.redis.get(keys.active_version(model)))

    async def set_active_version(self, model: str, ver: str) -> None:
        """Make a version the fleet's active one."""
        await self.redis.set(keys.active_version(model), ver)

    async def acquire_rollout(self, model: str, round_id: str, ttl_ms: int) -> str:
        """Take the model's rollout lock for a round unless another holds it; the holder."""
        key = keys.rollout(model)
        if await self.redis.set(key, round_id, nx=True, px=ttl_ms):
            return round_id
        return text_opt(await self.redis.get(key)) or ""  # "" : it lapsed meanwhile; try again

    async def release_rollout(self, model: str, round_id: str) -> bool:
        """Give the model's rollout lock back, if this round holds it."""
        return bool(
            await self.script(RELEASE_IF_OWNER)(keys=[keys.rollout(model)], args=[round_id])
        )
