"""Saga state in Redis, one file per concern; `SagaStore` is all of them on one client.

| file | what it holds |
|---|---|
| `rounds.py` | each round's hash, its audit log (a stream), outcome records, round-scoped sets |
| `devices.py` | the device registry and the leases that keep a device in one round |
| `models.py` | weights by content digest, the version registry, the active version |
| `aggregates.py` | each iteration's running FedAvg sum and who is in it |
| `deployments.py` | each canary device's standing in a rollout, counted per stage |
| `journal.py` | each instance's in-flight messages, dead letters, handled-message marks |
| `timers.py` | round deadlines per service, claimed by one instance when due |
| `progress.py` | per iteration: the validator's holdout metrics, each payload's size |

Every key is named in `services/runtime/keys.py`.
"""

from __future__ import annotations

from services.runtime.store._base import DEFAULT_TTL_S, connect
from services.runtime.store.aggregates import AggregateStore
from services.runtime.store.deployments import DeploymentStore, StageCounters
from services.runtime.store.devices import DeviceStore
from services.runtime.store.journal import InFlight, JournalStore
from services.runtime.store.models import ModelStore, decode_params, encode_params
from services.runtime.store.progress import Payload, ProgressStore
from services.runtime.store.rounds import RoundStore
from services.runtime.store.timers import TimerStore


class SagaStore(
    RoundStore,
    AggregateStore,
    DeploymentStore,
    DeviceStore,
    ModelStore,
    JournalStore,
    TimerStore,
    ProgressStore,
):
    """All Redis access of the services goes through here."""

    @classmethod
    def from_url(
        cls, url: str, *, ttl_s: int = DEFAULT_TTL_S, name: str | None = None
    ) -> SagaStore:
        """Connect (lazily) to the Redis at `url`, as client `name` (see `connect`)."""
        return cls(connect(url, name=name), ttl_s=ttl_s)


__all__ = [
    "InFlight",
    "Payload",
    "SagaStore",
    "StageCounters",
    "decode_params",
    "encode_params",
]
