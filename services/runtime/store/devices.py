"""Devices: the registry of their last statuses, and the leases that keep each in one round."""

from __future__ import annotations

from schemas.codec import encode, unpack
from schemas.device import DeviceStatus
from services.runtime import keys
from services.runtime.store._base import StoreBase, s

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class DeviceStore(StoreBase):
    """The device registry and the round leases."""

    async def lease(self, device_id: str, round_id: str, ttl_ms: int) -> bool:
        """Lease a device to a round unless another round holds it; idempotent per round."""
        if await self.redis.set(keys.lease(device_id), round_id, nx=True, px=ttl_ms):
            return True
        return s(await self.redis.get(keys.lease(device_id))) == round_id

    async def release(self, device_id: str, round_id: str) -> bool:
        """Release a device's lease if this round holds it."""
        return bool(await self.script(_RELEASE)(keys=[keys.lease(device_id)], args=[round_id]))

    async def lease_owner(self, device_id: str) -> str | None:
        """The round a device is leased to, if any."""
        return s(await self.redis.get(keys.lease(device_id)))

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
