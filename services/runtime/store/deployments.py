"""Deployments: each canary device's standing in a rollout, and counters of them per stage.

A round's deployment hash holds, per device it deployed to, `{standing}:{stage}`: `pending`
until the device reports, then its verdict (`ok`, `bad`, `failed`), once. The round hash keeps,
per stage, how many of its devices stand so (`state.stage_counter_field`); every move of a
standing updates its counters in the same script, so a report costs one round trip and no read
of the stage. Both keys carry the round's hash tag (one slot on a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime import keys
from services.runtime.state import STAGE_COUNTERS, stage_counter_field
from services.runtime.store._base import StoreBase, text_hash

_PENDING = "pending"
_STANDINGS = ("pending", "ok", "bad", "failed")  # the order the judge script counts them in

# KEYS: deployment hash, round hash. ARGV: ttl, `pending:{stage}`, the stage's pending
# counter, devices... -> how many of the stage's devices are pending. A device armed before
# (a replay) is neither armed nor counted again, whatever its standing now. Nothing is
# written for a round that is gone (its counters would outlive it, with no TTL).
_ARM = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local armed = 0
for i = 4, #ARGV do
  armed = armed + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[2])
end
if armed > 0 then redis.call('HINCRBY', KEYS[2], ARGV[3], armed) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
"""
# KEYS: deployment hash, round hash. ARGV: device, verdict, `pending`, the counter names'
# prefixes for the verdict, then for pending, ok, bad, failed (a stage's counter is
# `{prefix}_{stage}`, as `state.stage_counter_field` names it).
# -> {stage, 1 if this call judged the device else 0, pending, ok, bad, failed}, or {0} when
# the device is not in the rollout (or the round is gone). A device judged before keeps its
# verdict (a repeated or late report changes nothing) and gets its stage's counters back.
_JUDGE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return {0} end
local standing = redis.call('HGET', KEYS[1], ARGV[1])
if not standing then return {0} end
local was, stage = string.match(standing, '^([^:]+):(%d+)$')
if not stage then return {0} end
local judged = 0
if was == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. stage)
  redis.call('HINCRBY', KEYS[2], ARGV[5] .. '_' .. stage, -1)
  redis.call('HINCRBY', KEYS[2], ARGV[4] .. '_' .. stage, 1)
  judged = 1
end
local counts = redis.call('HMGET', KEYS[2], ARGV[5] .. '_' .. stage, ARGV[6] .. '_' .. stage,
  ARGV[7] .. '_' .. stage, ARGV[8] .. '_' .. stage)
local out = {tonumber(stage), judged}
for i = 1, 4 do out[i + 2] = tonumber(counts[i] or '0') end
return out
"""


@dataclass(frozen=True)
class StageCounters:
    """A stage's devices counted by standing, as a report left them."""

    stage: int
    judged: bool  # this call recorded the device's verdict (False: it had one already)
    pending: int
    ok: int
    bad: int
    failed: int


class DeploymentStore(StoreBase):
    """Canary standings per device, counted per stage."""

    async def arm_stage(self, round_id: str, stage: int, devices: list[str]) -> int:
        """Record each device pending in `stage` unless it has a standing already (a replay
        changes nothing), counting the new ones; returns how many of the stage are pending."""
        if not devices:
            return 0
        pending = stage_counter_field(_PENDING, stage)
        return int(
            await self.script(_ARM)(
                keys=[keys.deployment(round_id), keys.round_hash(round_id)],
                args=[self.ttl_s, f"{_PENDING}:{stage}", pending, *devices],
            )
        )

    async def judge_device(
        self, round_id: str, device_id: str, verdict: str
    ) -> StageCounters | None:
        """Record a pending device's verdict (`ok`, `bad`, `failed`) and count it, in one round
        trip; returns its stage's counters, or None if the device is not in the rollout."""
        reply = await self.script(_JUDGE)(
            keys=[keys.deployment(round_id), keys.round_hash(round_id)],
            args=[
                device_id,
                verdict,
                _PENDING,
                STAGE_COUNTERS[verdict],
                *(STAGE_COUNTERS[s] for s in _STANDINGS),
            ],
        )
        stage, *rest = (int(n) for n in reply)
        if not stage:
            return None
        judged, pending, ok, bad, failed = rest
        return StageCounters(stage, bool(judged), pending, ok, bad, failed)

    async def deployment(self, round_id: str) -> dict[str, str]:
        """Every device of the rollout and its standing (`{standing}:{stage}`): a full read."""
        return text_hash(await self.redis.hgetall(keys.deployment(round_id)))

    async def deployed_count(self, round_id: str) -> int:
        """How many devices the rollout deployed to."""
        return int(await self.redis.hlen(keys.deployment(round_id)))
