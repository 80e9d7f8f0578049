"""Aggregates: each iteration's buffered updates and the devices already in its sum.

The aggregator keeps the running FedAvg sum in memory and makes each update durable here
first, as the payload the device sent (about the update's own bytes of Redis traffic, and
no model-sized read or write per update). Buffering is one script that also checks the
coordinator's fence (`closing_{it}`) and the device's state, so an update is never taken
after the iteration closed, and a device is counted at most once. The buffer is dropped
once the iteration's model is recorded.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from federated.errors import PayloadError
from schemas.codec import unpack
from schemas.device import DeviceStatus
from services.runtime import keys
from services.runtime.errors import StaleRound
from services.runtime.state import Field, RoundState, base_field, closing_field
from services.runtime.store._base import StoreBase, raw_opt, raws_opt, text, text_opt, texts
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
return {left, redis.call('HLEN', KEYS[3]) - done}
"""
_CLOSING, _NOT_TRAINING = -1, -2

# Buffer one accepted update: the durable half of the aggregator's running sum (the other
# half is the sum in the aggregator's memory, `services/aggregator/sums.py`).
# KEYS: the iteration's buffer (hash device -> record), contributors (hash device -> msg_id
# of the update taken), round hash, iteration hash, the round's traffic hash. ARGV: device,
# closing field, ttl, record, payload bytes, bytes field, payloads field, traffic field,
# msg_id.
# -> 1 buffered, 0 already in, -1 closing, -2 not training.
_BUFFER = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return -1 end
if redis.call('HGET', KEYS[4], ARGV[1]) ~= 'training' then return -2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[9])
if redis.call('HLEN', KEYS[2]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
end
redis.call('HINCRBY', KEYS[3], ARGV[6], ARGV[5])
redis.call('HINCRBY', KEYS[3], ARGV[7], 1)
redis.call('HSET', KEYS[5], ARGV[8], ARGV[5])
return 1
"""
# What an update's checks read of its round. KEYS: round hash, cohort, held, contributors.
# ARGV: device, round fields... -> {the fields' values, in the cohort (0/1), digest held,
# msg_id taken} (a missing value is false).
_VIEW = """
return {
  redis.call('HMGET', KEYS[1], unpack(ARGV, 2)),
  redis.call('SISMEMBER', KEYS[2], ARGV[1]),
  redis.call('HGET', KEYS[3], ARGV[1]),
  redis.call('HGET', KEYS[4], ARGV[1]),
}
"""
_RECORD = struct.Struct("<Q")  # a buffered update: its FedAvg weight, then its payload


def buffer_record(weight: int, blob: bytes) -> bytes:
    """How an update is buffered: its weight (8 bytes, little-endian), then its payload."""
    return _RECORD.pack(weight) + blob


def read_record(record: bytes) -> tuple[int, bytes]:
    """(weight, payload) of a buffered update."""
    if len(record) < _RECORD.size:
        raise PayloadError(f"buffered update is {len(record)} bytes")
    return _RECORD.unpack_from(record)[0], record[_RECORD.size :]


@dataclass(frozen=True)
class SenderView:
    """What the aggregator knows of a device's update before it decodes it."""

    round: RoundState  # the fields the checks read
    registered: DeviceStatus | None  # the sender's registry entry
    selected: bool  # whether it is in the round's cohort
    held: str | None  # the digest of the model it was sent
    taken: str | None  # the msg_id of its update already in the iteration's sum, if any


class AggregateStore(StoreBase):
    """Running sums per iteration, and who is in them."""

    async def buffer_update(
        self,
        round_id: str,
        it: int,
        device_id: str,
        weight: int,
        blob: bytes,
        msg_id: str,
    ) -> bool:
        """Make an accepted update durable, once per device: True if it is new, False if the
        device's update is already in (a redelivery, or a retried call that had run). The
        contributors remember the `msg_id` taken, so a retransmission is known as one
        (`SenderView.taken`) even after the iteration closed.

        One script, so the fence (`closing_{it}`), the device's state, the contributor set,
        the buffered payload and the round's uplink counters (`progress.py`) move together:
        an update is counted exactly once or not at all. StaleRound when the iteration is
        fenced or the device no longer training in it.
        """
        names = [
            keys.accumulator(round_id, it),
            keys.contributors(round_id, it),
            keys.round_hash(round_id),
            keys.iteration(round_id, it),
            keys.traffic(round_id),
        ]
        written = await self.script(_BUFFER)(
            keys=names,
            args=[
                device_id,
                closing_field(it),
                self.ttl_s,
                buffer_record(weight, blob),
                len(blob),
                Field.BYTES_UP,
                Field.PAYLOADS_UP,
                traffic_field(it, "up", device_id),
                msg_id,
            ],
        )
        if written == _CLOSING:
            raise StaleRound(f"iteration {it} closed while the update was checked")
        if written == _NOT_TRAINING:
            raise StaleRound(f"device {device_id} is not training in iteration {it}")
        return bool(written)

    async def buffered(
        self, round_id: str, it: int, device_ids: list[str]
    ) -> dict[str, tuple[int, bytes] | None]:
        """The buffered (weight, payload) of each device (None where none is buffered)."""
        if not device_ids:
            return {}
        replies = raws_opt(await self.redis.hmget(keys.accumulator(round_id, it), device_ids))
        return {
            d: None if r is None else read_record(r)
            for d, r in zip(device_ids, replies, strict=True)
        }

    async def drop_buffer(self, round_id: str, it: int) -> None:
        """Forget an iteration's buffered updates (its model is recorded)."""
        await self.redis.delete(keys.accumulator(round_id, it))

    async def sender_view(self, round_id: str, it: int, device_id: str) -> SenderView:
        """What the checks of a device's update for iteration `it` need, in one round trip:
        a script over the round's keys and, at the same time, the sender's registry entry
        (another hash slot on a cluster, so not in the script)."""
        fields = [
            Field.STATUS,
            Field.ITERATION,
            Field.EXAMPLE_CAP,
            base_field(it),
            closing_field(it),
        ]
        names = [
            keys.round_hash(round_id),
            keys.cohort(round_id),
            keys.held(round_id),
            keys.contributors(round_id, it),
        ]
        (values, selected, held, taken), registered = await asyncio.gather(
            self.script(_VIEW)(keys=names, args=[device_id, *fields]),
            self.redis.hget(keys.devices(), device_id),
        )
        round_hash = {f: text(v) for f, v in zip(fields, values, strict=True) if v is not None}
        status = raw_opt(registered)
        return SenderView(
            round=RoundState.from_hash(round_id, round_hash),
            registered=DeviceStatus.model_validate(unpack(status)) if status else None,
            selected=bool(selected),
            held=text_opt(held or None),
            taken=text_opt(taken or None),
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
        left, pending = await self.script(_SETTLE)(keys=keys_, args=[device_id, state, int(done)])
        return None if int(left) < 0 else (int(left), int(pending))

    async def contributors(self, round_id: str, it: int) -> set[str]:
        """Devices whose update is in the iteration's sum."""
        return set(texts(await self.redis.hkeys(keys.contributors(round_id, it))))

    async def contributed(self, round_id: str, it: int, device_id: str) -> bool:
        """Whether the device's update is in the iteration's sum."""
        return bool(await self.redis.hexists(keys.contributors(round_id, it), device_id))

    async def discard_aggregates(self, round_id: str, iterations: int) -> int:
        """Drop the sums of iterations 0..iterations-1; returns how many keys went."""
        names = [
            k
            for it in range(iterations)
            for k in (keys.accumulator(round_id, it), keys.contributors(round_id, it))
        ]
        return int(await self.redis.delete(*names)) if names else 0
