"""The selector service (see handlers.py)."""

from services.selector.handlers import service

__all__ = ["service"]
