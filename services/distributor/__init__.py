"""The distributor service (see handlers.py)."""

from services.distributor.handlers import service

__all__ = ["service"]
