"""The aggregator service (see handlers.py)."""

from services.aggregator.handlers import service

__all__ = ["service"]
