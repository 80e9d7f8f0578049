"""Process entry point shared by `python -m services.NAME` and `fedsaga service NAME`."""

import asyncio
import importlib
import signal
import sys
from typing import Any

import structlog
from pydantic import ValidationError

from schemas.errors import first_error
from schemas.steps import STEP_NAMES, Step
from services.runtime.identity import IdentityTaken, hold
from services.runtime.logging import configure
from services.runtime.settings import Settings
from services.runtime.store import SagaStore

log = structlog.get_logger()

# The six services, in saga order: one per step, named once in schemas/steps.py.
SERVICES = tuple(STEP_NAMES[step] for step in Step)


def dump_tasks() -> None:
    """Log what every asyncio task of this process awaits (`kill -USR1 PID`, for a stuck one),
    down the chain of awaits to the innermost."""
    for task in asyncio.all_tasks():
        where = " -> ".join(_awaits(task.get_coro()))
        log.warning("task", name=task.get_name(), awaiting=where or "(not started)")


def _awaits(coro: object) -> list[str]:
    """`function (file:line)` of a coroutine and each one it awaits, outermost first."""
    out: list[str] = []
    while coro is not None and len(out) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            out.append(
                f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 2)[-1]}:"
                f"{frame.f_lineno})"
            )
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


def main(name: str, **overrides: Any) -> None:
    """Run one service until SIGTERM/SIGINT (`overrides`: settings given as CLI flags).

    Exits 2, saying why in one line, for an unknown service, bad settings, or an instance
    another process already runs.
    """
    if name not in SERVICES:
        print(f"error: unknown service {name!r}; one of {', '.join(SERVICES)}", file=sys.stderr)
        raise SystemExit(2)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"error: {first_error(exc, whole='settings')}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, OSError) as exc:  # an unreadable or malformed config file
        print(f"error: settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure(name, settings.log_level, settings.log_format)
    service = importlib.import_module(f"services.{name}").service

    async def serve() -> int:
        store = SagaStore.from_url(settings.redis_url, ttl_s=settings.key_ttl_s)
        ready = asyncio.Event()
        holding = asyncio.create_task(hold(store, settings.service_identity(name), ready))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({holding, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        task = None if holding.done() else asyncio.create_task(service.run(settings))
        if task is not None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
            loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
            # Serve until stopped, or until another process holds this identity.
            await asyncio.wait({task, holding}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for part in (task, holding):
            if part is None:
                continue
            part.cancel()
            try:
                await part
            except asyncio.CancelledError:
                pass
            except IdentityTaken as exc:
                print(f"error: {exc}", file=sys.stderr)
                log.error("refused", reason=str(exc))
                code = 2
        await store.aclose()
        return code

    raise SystemExit(asyncio.run(serve()))
