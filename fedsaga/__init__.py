"""fedsaga: federated learning rounds for edge fleets, run as an MQTT saga by choreography."""

from fedsaga.client import FedSaga, RoundResult

__all__ = ["FedSaga", "RoundResult"]
