"""The device side: the agent, its local trainer and model store, and the fleet simulator."""

from edge_client.agent import DeviceAgent
from edge_client.config import DeviceProfile, FailureRates
from edge_client.fleet import Fleet, FleetSpec
from edge_client.store import LocalModelStore

__all__ = ["DeviceAgent", "DeviceProfile", "FailureRates", "Fleet", "FleetSpec", "LocalModelStore"]
