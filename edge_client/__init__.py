"""The device side: the agent, its local trainer and model store, and the fleet simulator.

The names load on first use: `python -m edge_client` runs this file first, and the process
that only starts and watches the fleet's worker processes needs none of numpy, aiomqtt or
pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_client.agent import DeviceAgent
    from edge_client.config import DeviceProfile, FailureRates
    from edge_client.fleet import Fleet, FleetSpec
    from edge_client.store import LocalModelStore

__all__ = ["DeviceAgent", "DeviceProfile", "FailureRates", "Fleet", "FleetSpec", "LocalModelStore"]

_WHERE = {
    "DeviceAgent": "agent",
    "DeviceProfile": "config",
    "FailureRates": "config",
    "Fleet": "fleet",
    "FleetSpec": "fleet",
    "LocalModelStore": "store",
}


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module 'edge_client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edge_client.{_WHERE[name]}"), name)
