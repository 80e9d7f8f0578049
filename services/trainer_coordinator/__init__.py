"""The trainer_coordinator service (see handlers.py)."""

from services.trainer_coordinator.handlers import service

__all__ = ["service"]
