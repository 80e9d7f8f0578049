"""What every part of the store shares: the Redis client, the key TTL and reply helpers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from services.runtime.redis_url import parse_redis_url

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
_RETRY_ON = [RedisConnectionError, RedisTimeoutError]


def _retry(*errors: type[RedisError]) -> Retry:
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
    return Retry(backoff, retries=10, supported_errors=(*_RETRY_ON, *errors))


# What `connect` returns: one server's client, or a cluster's (`redis+cluster://`).
Client = aioredis.Redis | RedisCluster


def connect(url: str, *, name: str | None = None) -> Client:
    """A lazily connecting client for `url` that rides out a Redis restart; `name` is what
    `CLIENT LIST` shows for its connections (`fedsaga-aggregator`, ...).

    A `redis+cluster://` (or `rediss+cluster://`) URL gives a Redis Cluster client: it learns
    the slot map from the nodes named and sends each command to its key's master. Every
    script and MULTI of the store keeps its keys in one slot (`keys.py`).
    """
    target = parse_redis_url(url)
    options: dict[str, Any] = {
        "client_name": name,
        "decode_responses": False,
        "retry": _retry(),
        "retry_on_error": _RETRY_ON,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,  # a stopped (not dead) Redis must not hang a handler forever
        "health_check_interval": 15,
    }
    if target.cluster:
        others = [ClusterNode(host, port) for host, port in target.nodes[1:]]
        # Its own attempts are immediate: a few, for a slot map that changed (`_Cluster`).
        options["retry"] = Retry(NoBackoff(), retries=_CLUSTER_ATTEMPTS)
        return _Cluster.from_url(target.url, startup_nodes=others, **options)
    return aioredis.Redis.from_url(url, **options)


_CLUSTER_ATTEMPTS = 3


class _Cluster(RedisCluster):
    """A cluster client that rides out a master's restart as a single server's does.

    redis-py (8.1) retries a command on a cluster at once, re-reading the slot map before
    each attempt, but never waits between attempts: one master restarting for a second
    failed 1 to 3 of some 150 operations (a single server's client, none of 310). So each
    command and script is retried here with the single server's backoff as well. Pipelines
    and transactions keep redis-py's immediate attempts. "No node reachable" is raised as a
    ConnectionError, as from a single server, so the runtime reconnects and retries instead
    of taking it for a bug.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        do = super().execute_command
        # CLUSTERDOWN too: a restarted master refuses commands until it rejoined the others.
        retry = _retry(ClusterDownError)
        return await retry.call_with_retry(lambda: do(*args, **kwargs), _no_cleanup)

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            if isinstance(exc.__cause__, RedisConnectionError | RedisTimeoutError | OSError):
                raise RedisConnectionError(str(exc)) from exc
            raise


async def _no_cleanup(error: Exception) -> None:
    """Nothing to undo between attempts (the cluster client reconnects by itself)."""


# -- replies ---------------------------------------------------------------------------------
# redis-py annotates replies as `bytes | str` (a sorted-set range even as pairs or lists) whatever
# `decode_responses` says. Our client never decodes, so every string reply is bytes: these
# helpers narrow a reply to that, checked, so the store's types say what Redis sends.

K = TypeVar("K", bound=bytes | str)

# How redis-py annotates an XRANGE / XREVRANGE reply.
StreamReply = list[tuple[bytes | str | None, dict[bytes | str, bytes | str] | None]] | None


def raw(reply: object) -> bytes:
    """A string reply: bytes, since the client never decodes."""
    if not isinstance(reply, bytes):
        raise TypeError(f"expected a bytes reply from Redis, got {type(reply).__name__}")
    return reply


def raw_opt(reply: object) -> bytes | None:
    """A string reply that may be nil (a missing key or field)."""
    return None if reply is None else raw(reply)


def raws(replies: Iterable[object]) -> list[bytes]:
    """A list reply of strings (set members, a sorted-set range without scores)."""
    return [raw(r) for r in replies]


def raws_opt(replies: Iterable[object]) -> list[bytes | None]:
    """A list reply of strings that may be nil (HMGET, MGET)."""
    return [raw_opt(r) for r in replies]


def text(reply: object) -> str:
    """A string reply as text."""
    return raw(reply).decode()


def texts(replies: Iterable[object]) -> list[str]:
    """A list reply of strings as text."""
    return [text(r) for r in replies]


def text_opt(reply: object) -> str | None:
    """A string reply that may be nil, as text."""
    return None if reply is None else text(reply)


def raw_hash(reply: Mapping[K, object] | None) -> dict[bytes, bytes]:
    """A hash reply (HGETALL, a stream entry's fields) as bytes."""
    if reply is None:
        raise TypeError("expected a hash reply from Redis, got None")
    return {raw(k): raw(v) for k, v in reply.items()}


def text_hash(reply: Mapping[K, bytes | str]) -> dict[str, str]:
    """A hash reply as text."""
    return {text(k): text(v) for k, v in reply.items()}


def stream_entries(reply: StreamReply) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """An XRANGE / XREVRANGE reply as (entry id, fields) pairs, in the reply's order."""
    return [(raw(entry_id), raw_hash(fields)) for entry_id, fields in reply or []]


S = TypeVar("S", bound=str)  # a field name: plain text or a StrEnum member

# -- arguments -------------------------------------------------------------------------------


def plain(fields: Mapping[S, Any]) -> dict[FieldT, EncodableT]:
    """Hash fields as Redis-native values (enum names and values as their plain str/int)."""
    # IntEnum members would be written as their repr by redis-py on Python 3.11.
    return {str(k): int(v) if isinstance(v, int) else v for k, v in fields.items()}


class StoreBase:
    """The client and the TTL every key gets."""

    def __init__(self, redis: Client, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._scripts: dict[str, AsyncScript] = {}
        # Weights by content digest, recently read (immutable, so never stale): a service
        # reads an iteration's base model once, not once per update.
        self._params: OrderedDict[str, Any] = OrderedDict()

    def script(self, source: str) -> AsyncScript:
        """`source` registered once per store (Lua runs atomically in Redis)."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = self.redis.register_script(source)
        return found

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()
