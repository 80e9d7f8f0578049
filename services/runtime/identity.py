"""One process per service identity: a second `fedsaga service aggregator` is refused.

Two processes with one identity (`fedsaga-aggregator-0`) would share one MQTT client id, so
the broker would disconnect each whenever the other connects (seen: every ~200 ms), and one
in-flight journal. Each process therefore holds its identity in Redis (`host:pid:start`,
expiring after HOLD_MS, refreshed every HOLD_MS / 3). A newcomer finding it held:
- by a process on this host that is gone (killed with kill -9, say): takes it over at once
  (a compare-and-set against that holder, so of two newcomers one wins);
- by a live process on this host: exits at once, saying how to run another instance;
- by a process on another host: waits for the hold to lapse (a host that died stops
  refreshing it), and exits if it does not.
If Redis is away at start, the service starts anyway and claims the identity once it can; a
hold found taken by another live process later ends the service (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Literal

import structlog

from services.runtime.policy import CONNECTION_ERRORS
from services.runtime.store import SagaStore

log = structlog.get_logger()

HOLD_MS = 15_000

Verdict = Literal["ours", "take_over", "wait", "refuse"]


class IdentityTaken(RuntimeError):
    """Another live process runs this service instance."""


def this_process() -> str:
    """How a holder names itself: `host:pid:start`, its start time in clock ticks since boot
    (so a pid reused by another process after a kill -9 is not mistaken for the holder)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    """The process's start time from /proc (empty where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _parts(holder: str) -> tuple[str, str, str]:
    host, _, rest = holder.partition(":")
    pid, _, start = rest.partition(":")
    return host, pid, start


def verdict(holder: str, me: str, holder_alive: bool) -> Verdict:
    """What a process `me` does about the identity's current `holder` (both `host:pid:start`).

    `holder_alive` says whether the holder's process still runs, which only means something
    when the holder is on this host.
    """
    if holder == me:
        return "ours"
    if _parts(holder)[0] != _parts(me)[0]:
        return "wait"
    return "refuse" if holder_alive else "take_over"


def pid_alive(holder: str) -> bool:
    """Does the holder's process still run on this host: its pid, started when it says?
    Where that cannot be told (no /proc), it counts as alive: wait rather than take over."""
    _, pid, start = _parts(holder)
    if not pid.isdigit():
        return False
    if not Path("/proc/self/stat").exists():
        return True
    return bool(start) and _start_time(int(pid)) == start


def refusal(identity: str, holder: str) -> str:
    """The message a refused newcomer exits with."""
    host, pid, _ = _parts(holder)
    return (
        f"{identity} is already running (pid {pid} on {host}); to run another instance of "
        "this service, give each instance its own FEDSAGA_INSTANCE and set FEDSAGA_SHARED=true"
    )


async def claim(store: SagaStore, identity: str, me: str) -> None:
    """Take the identity for this process, or raise IdentityTaken."""
    deadline = asyncio.get_running_loop().time() + 2 * HOLD_MS / 1000
    while True:
        holder = await store.claim_instance(identity, me, HOLD_MS)
        action = verdict(holder, me, pid_alive(holder))
        if action == "ours":
            return
        if action == "take_over":
            log.warning("taking over from a process gone", identity=identity, holder=holder)
            if await store.claim_instance(identity, me, HOLD_MS, replacing=holder) == me:
                return
            continue  # another newcomer replaced it first: judge that one
        if action == "refuse" or asyncio.get_running_loop().time() > deadline:
            raise IdentityTaken(refusal(identity, holder))
        log.warning("identity held on another host; waiting", identity=identity, holder=holder)
        await asyncio.sleep(1.0)


async def hold(store: SagaStore, identity: str, ready: asyncio.Event) -> None:
    """Claim the identity (then set `ready`) and keep it until cancelled, releasing it then.

    Raises IdentityTaken when another live process holds it: before `ready` at start, or
    later (Redis was away at start, or another process took the identity while Redis lost
    it), which ends the service rather than let two processes share a client id. With Redis
    away at start, `ready` is set at once: serve, and claim when Redis is back.
    """
    me = this_process()
    claimed = False
    try:
        while True:
            try:
                if not claimed:
                    await claim(store, identity, me)
                    claimed = True
                elif (holder := await store.claim_instance(identity, me, HOLD_MS)) != me:
                    raise IdentityTaken(refusal(identity, holder))
            except CONNECTION_ERRORS:
                pass  # Redis away: keep serving, claim when it is back
            ready.set()
            await asyncio.sleep(HOLD_MS / 3000)
    finally:
        if claimed:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await store.release_instance(identity, me)
