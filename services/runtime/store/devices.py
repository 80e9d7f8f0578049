"""Devices: the registry of their last statuses, and the leases that keep each in one round."""

from __future__ import annotations

from schemas.base import now_ms
from schemas.codec import encode, unpack
from schemas.device import DeviceStatus
from services.runtime import keys
from services.runtime.store._base import (
    RELEASE_IF_OWNER,
    StoreBase,
    raw,
    raw_opt,
    raws,
    raws_opt,
    text_opt,
    texts,
)


class DeviceStore(StoreBase):
    """The device registry and the round leases."""

    async def lease(self, device_id: str, round_id: str, ttl_ms: int) -> bool:
        """Lease a device to a round unless another round holds it; idempotent per round."""
        if await self.redis.set(keys.lease(device_id), round_id, nx=True, px=ttl_ms):
            return True
        return text_opt(await self.redis.get(keys.lease(device_id))) == round_id

    async def release(self, device_id: str, round_id: str) -> bool:
        """Release a device's lease if this round holds it."""
        return bool(
            await self.script(RELEASE_IF_OWNER)(keys=[keys.lease(device_id)], args=[round_id])
        )

    async def lease_owner(self, device_id: str) -> str | None:
        """The round a device is leased to, if any."""
        return text_opt(await self.redis.get(keys.lease(device_id)))

    async def put_device(self, status: DeviceStatus) -> None:
        """Record a device's latest status and when it arrived."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.devices(), status.device_id, encode(status))
            pipe.zadd(keys.devices_seen(), {status.device_id: now_ms()})
            await pipe.execute()

    async def devices(self, *, seen_since_ms: int | None = None) -> list[DeviceStatus]:
        """Registered devices' latest statuses; only those heard from since, when given."""
        if seen_since_ms is None:
            found = [raw(v) for v in (await self.redis.hgetall(keys.devices())).values()]
        else:
            ids = raws(await self.redis.zrangebyscore(keys.devices_seen(), seen_since_ms, "+inf"))
            replies = raws_opt(await self.redis.hmget(keys.devices(), ids)) if ids else []
            found = [r for r in replies if r]
        return [DeviceStatus.model_validate(unpack(v)) for v in found]

    async def device(self, device_id: str) -> DeviceStatus | None:
        """One device's latest status."""
        reply = raw_opt(await self.redis.hget(keys.devices(), device_id))
        return DeviceStatus.model_validate(unpack(reply)) if reply else None

    async def statuses(self, device_ids: list[str]) -> dict[str, DeviceStatus | None]:
        """Several devices' latest statuses (None when unknown), in one round trip."""
        replies = raws_opt(await self.redis.hmget(keys.devices(), device_ids)) if device_ids else []
        return {
            d: DeviceStatus.model_validate(unpack(r)) if r else None
            for d, r in zip(device_ids, replies, strict=True)
        }

    async def forget_devices(self, seen_before_ms: int) -> list[str]:
        """Drop the registry entries of devices not heard from since; returns their ids."""
        stale = texts(await self.redis.zrangebyscore(keys.devices_seen(), "-inf", seen_before_ms))
        if stale:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.devices(), *stale)
                pipe.zrem(keys.devices_seen(), *stale)
                await pipe.execute()
        return stale
