"""One process per service identity: a second `fedsaga service aggregator` is refused.

Two processes with one identity (`fedsaga-aggregator-0`) would share one MQTT client id, so
the broker would disconnect each whenever the other connects (seen: every ~200 ms), and one
in-flight journal. Each process therefore holds its identity in Redis (`host:pid`, expiring
after HOLD_MS, refreshed every HOLD_MS / 3). A newcomer finding it held:
- by a process on this host that is gone (killed with kill -9, say): takes it over at once;
- by a live process on this host: exits at once, saying how to run another instance;
- by a process on another host: waits for the hold to lapse (a host that died stops
  refreshing it), and exits if it does not.
If Redis is away at start, the service starts anyway and claims the identity once it can.
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
    """How a holder names itself: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def verdict(holder: str, me: str, holder_alive: bool) -> Verdict:
    """What a process `me` does about the identity's current `holder` (both `host:pid`).

    `holder_alive` says whether the holder's pid runs, which only means something when the
    holder is on this host.
    """
    if holder == me:
        return "ours"
    holder_host = holder.rpartition(":")[0]
    if holder_host != me.rpartition(":")[0]:
        return "wait"
    return "refuse" if holder_alive else "take_over"


def pid_alive(holder: str) -> bool:
    """Does the holder's pid still run a fedsaga process on this host? (A pid reused by an
    unrelated process after a kill -9 does not count.)"""
    pid = holder.rpartition(":")[2]
    if not pid.isdigit():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"services" in cmdline or b"fedsaga" in cmdline


def refusal(identity: str, holder: str) -> str:
    """The message a refused newcomer exits with."""
    return (
        f"{identity} is already running ({holder}); to run another instance of this "
        "service, give each instance its own FEDSAGA_INSTANCE and set FEDSAGA_SHARED=true"
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
            log.warning("took over from a process gone", identity=identity, holder=holder)
            await store.claim_instance(identity, me, HOLD_MS, force=True)
            return
        if action == "refuse" or asyncio.get_running_loop().time() > deadline:
            raise IdentityTaken(refusal(identity, holder))
        log.warning("identity held on another host; waiting", identity=identity, holder=holder)
        await asyncio.sleep(1.0)


async def hold(store: SagaStore, identity: str, ready: asyncio.Event) -> None:
    """Claim the identity (then set `ready`) and keep it until cancelled, releasing it then.

    Raises IdentityTaken before `ready` when another live process holds it. With Redis away
    at start, `ready` is set at once (serve; the claim is made when Redis is back). A hold
    lost later (Redis restarted without its data, say) is logged and taken back.
    """
    me = this_process()
    claimed = False
    try:
        while True:
            try:
                if not claimed:
                    await claim(store, identity, me)
                    claimed = True
                else:
                    holder = await store.claim_instance(identity, me, HOLD_MS)
                    if holder != me:
                        log.error("identity held by another", identity=identity, holder=holder)
            except CONNECTION_ERRORS:
                pass  # Redis away: keep serving, claim when it is back
            ready.set()
            await asyncio.sleep(HOLD_MS / 3000)
    finally:
        if claimed:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await store.release_instance(identity, me)
