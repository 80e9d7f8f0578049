"""Aggregates: each iteration's running FedAvg sum and the devices already folded into it.

Folding an update is one optimistic transaction that also watches the round and the
iteration's device states, so it cannot commit once the coordinator fenced the iteration
(`closing_{it}`) or gave up on the device, and a device is counted at most once.
"""

from __future__ import annotations

import numpy as np

from federated.aggregate import FedAvgAccumulator
from schemas.codec import unpack
from schemas.device import DeviceStatus
from services.runtime import keys
from services.runtime.errors import SagaConflict, StaleRound
from services.runtime.state import Field, RoundState
from services.runtime.store._base import StoreBase, raw_opt, text_hash, text_opt, texts
from services.runtime.store.progress import traffic_field

# KEYS: iteration hash, its counts. ARGV: ttl, devices... -> devices training
_ARM = """
for i = 2, #ARGV do
  if redis.call('HSETNX', KEYS[1], ARGV[i], 'training') == 1 then
    redis.call('HINCRBY', KEYS[2], 'training', 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return tonumber(redis.call('HGET', KEYS[2], 'training') or '0')
"""
# KEYS: iteration hash, its counts, its contributors. ARGV: device, new state, done (0/1).
# -> {devices still training, contributors not yet marked done}, or {-1, 0} if the device
# was not training.
_SETTLE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'training' then return {-1, 0} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local left = redis.call('HINCRBY', KEYS[2], 'training', -1)
local done = tonumber(redis.call('HGET', KEYS[2], 'done') or '0')
if ARGV[3] == '1' then done = redis.call('HINCRBY', KEYS[2], 'done', 1) end
return {left, redis.call('SCARD', KEYS[3]) - done}
"""
_FOLD_RETRIES = 50
_CLOSING, _NOT_TRAINING, _MOVED = -1, -2, -3

# KEYS: sum, contributors, round hash, iteration hash. ARGV: device, closing field.
# -> {already in, closing, device's state or '', contributors (the sum's version), sum or ''}
_FOLD_READ = """
local inside = redis.call('SISMEMBER', KEYS[2], ARGV[1])
local closing = redis.call('HEXISTS', KEYS[3], ARGV[2])
local state = redis.call('HGET', KEYS[4], ARGV[1]) or ''
local version = redis.call('SCARD', KEYS[2])
local sum = redis.call('GET', KEYS[1]) or ''
return {inside, closing, state, version, sum}
"""
# KEYS: the above and the round's traffic hash. ARGV: device, closing field, version read,
# new sum, ttl, payload bytes, bytes field, payloads field, traffic field.
# -> 1 folded, 0 already in, -1 closing, -2 not training, -3 another fold came between.
_FOLD_WRITE = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return -1 end
if redis.call('HGET', KEYS[4], ARGV[1]) ~= 'training' then return -2 end
if redis.call('SCARD', KEYS[2]) ~= tonumber(ARGV[3]) then return -3 end
redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('HINCRBY', KEYS[3], ARGV[7], ARGV[6])
redis.call('HINCRBY', KEYS[3], ARGV[8], 1)
redis.call('HSET', KEYS[5], ARGV[9], ARGV[6])
redis.call('EXPIRE', KEYS[5], ARGV[5])
return 1
"""


def _check_foldable(it: int, device_id: str, *, closing: bool, state: bytes | None) -> None:
    """StaleRound when the iteration is closing or the device is not training in it."""
    if closing:
        raise StaleRound(f"iteration {it} closed while the update was checked")
    if state != b"training":
        raise StaleRound(f"device {device_id} is not training in iteration {it}")


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
        round_key, it_key = keys.round_hash(round_id), keys.iteration(round_id, it)
        fold_keys = [acc_key, contrib_key, round_key, it_key, keys.traffic(round_id)]
        closing = f"closing_{it}"
        for _ in range(_FOLD_RETRIES):
            # Read everything in one round trip, add in numpy, write back in one round trip
            # if no other fold came between (the contributor count is the sum's version).
            contributed, is_closing, state, version, raw = await self.script(_FOLD_READ)(
                keys=fold_keys[:4], args=[device_id, closing]
            )
            if contributed:
                return False
            _check_foldable(it, device_id, closing=bool(is_closing), state=raw_opt(state) or None)
            acc = FedAvgAccumulator.from_bytes(raw) if raw else FedAvgAccumulator()
            acc.add(delta, weight)
            written = await self.script(_FOLD_WRITE)(
                keys=fold_keys,
                args=[
                    device_id,
                    closing,
                    version,
                    acc.to_bytes(),
                    self.ttl_s,
                    payload_bytes,
                    Field.BYTES_UP,
                    Field.PAYLOADS_UP,
                    traffic_field(it, "up", device_id),
                ],
            )
            if written in (0, 1):
                return bool(written)
            if written == _CLOSING:
                _check_foldable(it, device_id, closing=True, state=b"training")
            if written == _NOT_TRAINING:
                _check_foldable(it, device_id, closing=False, state=None)
            # _MOVED: another fold came between the read and the write: read again
        raise SagaConflict("accumulator kept conflicting")


    async def sender_view(
        self, round_id: str, device_id: str
    ) -> tuple[RoundState, DeviceStatus | None, bool, str | None]:
        """What an update's checks need, in one round trip: the round, the sender's registry
        entry, whether it is in the cohort, and the digest of the model it was sent."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.round_hash(round_id))
            pipe.hget(keys.devices(), device_id)
            pipe.sismember(keys.cohort(round_id), device_id)
            pipe.hget(keys.held(round_id), device_id)
            round_hash, registered, selected, held = await pipe.execute()
        state = RoundState.from_hash(round_id, text_hash(round_hash))
        status = raw_opt(registered)
        return (
            state,
            DeviceStatus.model_validate(unpack(status)) if status else None,
            bool(selected),
            text_opt(held),
        )

    async def arm_iteration(self, round_id: str, it: int, devices: list[str]) -> int:
        """Mark each device training in the iteration (once: a replay changes nothing) and
        count them; returns how many are training."""
        keys_ = [keys.iteration(round_id, it), keys.iteration_counts(round_id, it)]
        return int(await self.script(_ARM)(keys=keys_, args=[self.ttl_s, *devices]))

    async def settle_device(
        self, round_id: str, it: int, device_id: str, state: str, *, done: bool
    ) -> tuple[int, int] | None:
        """Move a device from training to `state` (done: it delivered). Returns how many are
        still training and how many contributors are not yet marked done; None if the
        device was not training (a repeat, or after the iteration closed)."""
        keys_ = [
            keys.iteration(round_id, it),
            keys.iteration_counts(round_id, it),
            keys.contributors(round_id, it),
        ]
        left, pending = await self.script(_SETTLE)(
            keys=keys_, args=[device_id, state, int(done)]
        )
        return None if int(left) < 0 else (int(left), int(pending))

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
