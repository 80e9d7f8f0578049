"""Where Redis is, read from one URL: a single server, or a Redis Cluster.

- `redis://host:port/db`, `rediss://...` (TLS), `unix:///path/to/socket`: one server.
- `redis+cluster://host:port[,host:port...]`, `rediss+cluster://...` (TLS): a Redis Cluster,
  named by any of its nodes (several, so that one being down as a process starts does not
  matter); the client learns the other nodes and which master serves each slot. A cluster
  has database 0 only.

The settings validate a URL with `parse_redis_url`; the store connects with what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

from schemas.mqtt import redact

# A cluster scheme, and the single-server scheme its nodes speak.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL."""

    # What redis-py's `from_url` reads: for a cluster, the first node under its plain scheme
    # (`redis://` or `rediss://`), with the credentials and options of the URL.
    url: str
    # A cluster's nodes as given, (host, port) each, the first one included; empty for a
    # single server.
    nodes: tuple[tuple[str, int], ...] = ()

    @property
    def cluster(self) -> bool:
        """Whether this is a Redis Cluster."""
        return bool(self.nodes)


def parse_redis_url(url: str) -> RedisTarget:
    """`url` parsed; ValueError naming the URL (without its password) when it is not one of
    the forms above."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed IPv6 bracket (the URL unprintable: a password)
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{redact(url)!r}: scheme must be one of {', '.join(SCHEMES)}")
    plain = CLUSTER_SCHEMES.get(parts.scheme)
    if plain is None:
        return RedisTarget(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes = tuple(_node(url, text) for text in hosts.split(","))
    if parts.path not in ("", "/", "/0") or parse_qs(parts.query).get("db", ["0"]) != ["0"]:
        raise ValueError(f"{redact(url)!r}: a Redis Cluster has database 0 only")
    host, port = nodes[0]
    first = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return RedisTarget(urlunsplit((plain, userinfo + at + first, "", parts.query, "")), nodes)


def _node(url: str, text: str) -> tuple[str, int]:
    """One `host[:port]` of a cluster URL (an IPv6 address in brackets)."""
    host: str | None = None
    port: int | None = None
    try:
        node = urlsplit(f"//{text}")
        if node.username is None and not text.endswith(":"):
            host, port = node.hostname, node.port
    except ValueError:  # a port that is no number or out of range, an unclosed bracket
        pass
    if not host or port == 0:
        raise ValueError(f"{redact(url)!r}: {text!r} is not a node's host[:port]")
    return host, port or DEFAULT_PORT
