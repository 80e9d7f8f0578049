"""Aggregates: each iteration's running FedAvg sum and the devices already folded into it.

Folding an update is one optimistic transaction that also watches the round and the
iteration's device states, so it cannot commit once the coordinator fenced the iteration
(`closing_{it}`) or gave up on the device, and a device is counted at most once.
"""

from __future__ import annotations

import numpy as np
from redis.exceptions import WatchError

from federated.aggregate import FedAvgAccumulator
from services.runtime import keys
from services.runtime.errors import SagaConflict, StaleRound
from services.runtime.state import Field
from services.runtime.store._base import StoreBase, raw_opt, texts
from services.runtime.store.progress import traffic_field

_WATCH_RETRIES = 50


class AggregateStore(StoreBase):
    """Running sums per iteration, and who is in them."""

    async def fold_update(
        self,
        round_id: str,
        it: int,
        device_id: str,
        delta: np.ndarray,
        weight: int,
        *,
        payload_bytes: int,
    ) -> bool:
        """Add one weighted update to the iteration's sum; False if the device is in it.

        The round's uplink counters and the update's size (`progress.py`) are written in the
        same transaction, so they count each update exactly once too.
        """
        acc_key, contrib_key = keys.accumulator(round_id, it), keys.contributors(round_id, it)
        traffic_key = keys.traffic(round_id)
        round_key, it_key = keys.round_hash(round_id), keys.iteration(round_id, it)
        for _ in range(_WATCH_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(acc_key, contrib_key, round_key, it_key)
                    if await pipe.sismember(contrib_key, device_id):
                        return False
                    if await pipe.hexists(round_key, f"closing_{it}"):
                        raise StaleRound(f"iteration {it} closed while the update was checked")
                    if await pipe.hget(it_key, device_id) != b"training":
                        raise StaleRound(f"device {device_id} is not training in iteration {it}")
                    raw = raw_opt(await pipe.get(acc_key))
                    acc = FedAvgAccumulator.from_bytes(raw) if raw else FedAvgAccumulator()
                    acc.add(delta, weight)
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.set(acc_key, acc.to_bytes(), ex=self.ttl_s)
                    pipe.sadd(contrib_key, device_id)
                    pipe.expire(contrib_key, self.ttl_s)
                    pipe.hincrby(round_key, Field.BYTES_UP, payload_bytes)
                    pipe.hincrby(round_key, Field.PAYLOADS_UP, 1)
                    pipe.hset(traffic_key, traffic_field(it, "up", device_id), payload_bytes)
                    pipe.expire(traffic_key, self.ttl_s)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise SagaConflict("accumulator kept conflicting")

    async def aggregate(self, round_id: str, it: int) -> FedAvgAccumulator | None:
        """The iteration's running sum, if any update was folded in."""
        raw = raw_opt(await self.redis.get(keys.accumulator(round_id, it)))
        return FedAvgAccumulator.from_bytes(raw) if raw else None

    async def contributors(self, round_id: str, it: int) -> set[str]:
        """Devices whose update is in the iteration's sum."""
        return set(texts(await self.redis.smembers(keys.contributors(round_id, it))))

    async def contributed(self, round_id: str, it: int, device_id: str) -> bool:
        """Whether the device's update is in the iteration's sum."""
        return bool(await self.redis.sismember(keys.contributors(round_id, it), device_id))

    async def discard_aggregates(self, round_id: str, iterations: int) -> int:
        """Drop the sums of iterations 0..iterations-1; returns how many keys went."""
        names = [
            k
            for it in range(iterations)
            for k in (keys.accumulator(round_id, it), keys.contributors(round_id, it))
        ]
        return int(await self.redis.delete(*names)) if names else 0
