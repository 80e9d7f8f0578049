"""Process entry point shared by `python -m services.NAME` and `fedsaga service NAME`."""

import asyncio
import contextlib
import importlib
import signal

import structlog

from schemas.steps import STEP_NAMES, Step
from services.runtime.identity import hold
from services.runtime.logging import configure
from services.runtime.settings import Settings
from services.runtime.store import SagaStore

log = structlog.get_logger()

# The six services, in saga order: one per step, named once in schemas/steps.py.
SERVICES = tuple(STEP_NAMES[step] for step in Step)


def dump_tasks() -> None:
    """Log what every asyncio task of this process awaits (`kill -USR1 PID`, for a stuck one)."""
    for task in asyncio.all_tasks():
        frames = task.get_stack()
        where = " <- ".join(
            f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno})"
            for f in reversed(frames)
        )
        log.warning("task", name=task.get_name(), awaiting=where or "(not started)")


def main(name: str) -> None:
    """Run one service until SIGTERM/SIGINT."""
    if name not in SERVICES:
        raise SystemExit(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    settings = Settings()
    configure(name, settings.log_level, settings.log_format)
    service = importlib.import_module(f"services.{name}").service

    async def serve() -> int:
        store = SagaStore.from_url(settings.redis_url, ttl_s=settings.key_ttl_s)
        ready = asyncio.Event()
        holding = asyncio.create_task(hold(store, settings.service_identity(name), ready))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({holding, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if holding.done():  # another process runs this instance
            log.error("refused", reason=str(holding.exception()))
            await store.aclose()
            return 2
        task = asyncio.create_task(service.run(settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
            await store.aclose()
        return 0

    raise SystemExit(asyncio.run(serve()))
