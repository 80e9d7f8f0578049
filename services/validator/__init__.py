"""The validator service (see handlers.py)."""

from services.validator.handlers import service

__all__ = ["service"]
