"""Timers: deadlines a service set for a round, claimed by one instance when due."""

from __future__ import annotations

from services.runtime import keys
from services.runtime.store._base import StoreBase, raws

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


class TimerStore(StoreBase):
    """Per-service timers in a sorted set scored by due time (ms)."""

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
        due = raws(
            await self.redis.zrangebyscore(keys.timers(service), "-inf", now, start=0, num=100)
        )
        claimed = []
        for member in due:
            lease = now + lease_ms
            if await self.script(_CLAIM)(keys=[keys.timers(service)], args=[member, now, lease]):
                round_id, _, tag = member.decode().partition("|")
                claimed.append((round_id, tag, lease))
        return claimed

    async def finish_timer(self, service: str, round_id: str, tag: str, lease: int) -> None:
        """Drop a timer that fired, unless its handler scheduled it again."""
        member = f"{round_id}|{tag}"
        await self.script(_UNCLAIM)(keys=[keys.timers(service)], args=[member, lease])
