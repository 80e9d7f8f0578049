"""How many clients a private broker may hold on this machine: its open files.

mosquitto holds a file descriptor per client. The launcher raises the broker's open-file soft
limit towards the config's `max_connections` as far as the hard limit allows, and lowers
`max_connections` to what that limit holds, so the broker refuses a client past it instead of
failing `accept()`. A stack told how many devices it must carry fails at once, saying how to
raise the limit, when the hard limit cannot hold them.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Open files mosquitto needs beside its clients' sockets: listeners, persistence, its log.
BROKER_FILES_RESERVE = 64
# Clients of a local stack beside its devices: the services (more when shared), the CLI, the
# Python client, a bench's probes.
STACK_CLIENTS = 64
# RLIM_INFINITY, as a number to compare with.
UNLIMITED = 1 << 20


@dataclass(frozen=True)
class BrokerFiles:
    """What a broker gets on this machine: its open-file soft limit and `max_connections`."""

    soft: int
    max_connections: int


def broker_files(*, configured: int, devices: int, soft: int, hard: int) -> BrokerFiles:
    """The broker's open-file soft limit and `max_connections`, given the config's
    `max_connections` (-1: unlimited), the devices it must carry, and the launcher's limits.

    The soft limit goes up towards `configured` plus a reserve as far as `hard` allows (never
    down); `max_connections` comes down to what that limit holds. Raises RuntimeError, saying
    how to raise the limit, when the devices and the stack's own clients do not fit.
    """
    wanted = devices + STACK_CLIENTS
    if wanted + BROKER_FILES_RESERVE > hard:
        raise RuntimeError(
            f"mosquitto needs {wanted + BROKER_FILES_RESERVE} open files for {devices} devices "
            f"and the stack's own clients, above this process's hard limit of {hard}: raise it "
            "(`ulimit -Hn` as root, `nofile` in /etc/security/limits.conf, LimitNOFILE= in "
            "systemd, `ulimits: nofile` in compose) or run fewer devices"
        )
    target = hard if configured < 0 else configured + BROKER_FILES_RESERVE
    limit = max(soft, min(hard, target))
    holds = limit - BROKER_FILES_RESERVE
    max_connections = holds if configured < 0 else min(configured, holds)
    if wanted > max_connections:
        raise RuntimeError(
            f"the broker config allows {configured} connections, fewer than {devices} devices "
            f"and {STACK_CLIENTS} for the stack's own clients: raise max_connections"
        )
    return BrokerFiles(limit, max_connections)


def open_files() -> tuple[int, int]:
    """This process's open-file (soft, hard) limits, RLIM_INFINITY as `UNLIMITED`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    return (UNLIMITED if soft == infinite else soft, UNLIMITED if hard == infinite else hard)


def option_value(text: str, option: str) -> str | None:
    """The value of `option` where a mosquitto config first sets it (None if it does not)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == option:
            return value.strip()
    return None


def raise_soft_limit(soft: int) -> None:
    """Set this process's open-file soft limit (in a child, before it execs the server)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
