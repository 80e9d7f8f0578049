"""The small runtime every fedsaga service shares.

| module | what it does |
|---|---|
| `app.py` | `Service`: subscribe, journal, acknowledge, route, handle, retry, reconnect |
| `routes.py` | `Route` and `on(handler)`: topic and model read from the handler's annotation |
| `saga.py` | compensation chaining: which step undoes its work when, once per round |
| `policy.py` | the error policy: final, retry with backoff, dead letter |
| `context.py` | `Context`: what a handler may touch (store, settings, publishing) |
| `connection.py` | the MQTT 5 client: durable session, acknowledgements after journaling |
| `store/` | saga state in Redis, one file per concern; `keys.py` names every key |
| `settings.py`, `logging.py`, `main.py` | configuration, log lines, the process entry point |
"""

from services.runtime.app import Service
from services.runtime.context import Context
from services.runtime.errors import FlError, Rejected, SagaConflict, StaleRound
from services.runtime.main import main
from services.runtime.routes import Route, on
from services.runtime.saga import compensation
from services.runtime.settings import Settings
from services.runtime.store import SagaStore

__all__ = [
    "Context",
    "FlError",
    "Rejected",
    "Route",
    "SagaConflict",
    "SagaStore",
    "Service",
    "Settings",
    "StaleRound",
    "compensation",
    "main",
    "on",
]
