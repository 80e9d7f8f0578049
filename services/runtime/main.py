"""Process entry point shared by `python -m services.NAME` and `fedsaga service NAME`."""

import asyncio
import contextlib
import importlib
import signal

from services.runtime.logging import configure
from services.runtime.settings import Settings

SERVICES = (
    "selector",
    "distributor",
    "trainer_coordinator",
    "aggregator",
    "validator",
    "deployer",
)


def main(name: str) -> None:
    """Run one service until SIGTERM/SIGINT."""
    if name not in SERVICES:
        raise SystemExit(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    settings = Settings.from_env()
    configure(name)
    service = importlib.import_module(f"services.{name}").service

    async def serve() -> None:
        task = asyncio.create_task(service.run(settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(serve())
