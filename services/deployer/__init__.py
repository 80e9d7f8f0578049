"""The deployer service (see handlers.py)."""

from services.deployer.handlers import service

__all__ = ["service"]
