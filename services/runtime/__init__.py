"""The small runtime every fedsaga service shares."""

from services.runtime.app import Context, Route, Service
from services.runtime.errors import FlError, Rejected, SagaConflict, StaleRound
from services.runtime.main import main
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
    "main",
]
