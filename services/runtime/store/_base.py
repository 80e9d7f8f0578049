"""What every part of the store shares: the Redis client, the key TTL and reply helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

DEFAULT_TTL_S = 7 * 24 * 3600

# Delete a key only if it still holds the caller's value (a lease or lock it owns).
RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A Redis restart closes every pooled connection; without retries the next command on each
# one fails ("Connection closed by server"). redis-py's `from_url` sets no retries, so ask
# for them: about 6 s of reconnect attempts before a command gives up, which covers a
# restart. A retried write may run twice, so every write of ours is idempotent.
_RETRY = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=10)
_RETRY_ON = [RedisConnectionError, RedisTimeoutError]


def connect(url: str) -> aioredis.Redis:
    """A lazily connecting client for `url` that rides out a Redis restart."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        retry=_RETRY,
        retry_on_error=_RETRY_ON,
        socket_connect_timeout=2,
        socket_timeout=10,  # a stopped (not dead) Redis must not hang a handler forever
        health_check_interval=15,
    )


def s(value: bytes | str | None) -> str | None:
    """A reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def plain(fields: Mapping[str, Any]) -> dict[str, str | int]:
    """Hash fields as Redis-native values."""
    # IntEnum members would be written as their repr by redis-py on Python 3.11.
    return {k: int(v) if isinstance(v, int) else v for k, v in fields.items()}


def text_hash(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    """A hash reply as text."""
    return {k.decode(): v.decode() for k, v in raw.items()}


class StoreBase:
    """The client and the TTL every key gets."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._scripts: dict[str, AsyncScript] = {}

    def script(self, source: str) -> AsyncScript:
        """`source` registered once per store (Lua runs atomically in Redis)."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = self.redis.register_script(source)
        return found

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()
