"""Models: weights by content digest, and the registry of versions and the active one."""

from __future__ import annotations

from collections.abc import Mapping

from federated.params import Params, digest
from schemas.base import now_ms
from schemas.codec import pack, unpack
from services.runtime import keys
from services.runtime.store._base import StoreBase, s, text_hash


def encode_params(params: Params) -> bytes:
    """Weights as msgpack of raw arrays (never pickle)."""
    return pack(dict(params))


def decode_params(raw: bytes) -> Params:
    """Inverse of `encode_params`."""
    obj = unpack(raw)
    return {k: v.copy() for k, v in obj.items()}


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
        return text_hash(await self.redis.hgetall(keys.version(model, ver)))

    async def versions(self, model: str) -> list[str]:
        """Registered versions of a model, oldest first."""
        return [v.decode() for v in await self.redis.zrange(keys.versions(model), 0, -1)]

    async def active_version(self, model: str) -> str | None:
        """The version deployed to the fleet."""
        return s(await self.redis.get(keys.active_version(model)))

    async def set_active_version(self, model: str, ver: str) -> None:
        """Make a version the fleet's active one."""
        await self.redis.set(keys.active_version(model), ver)
