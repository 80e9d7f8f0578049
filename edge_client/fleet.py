"""The fleet simulator: N device agents in one process, each with its own connection and data.

Data is sklearn's bundled digits set: the validator's holdout is split off first (same seed as
the validator's settings), the rest is split across devices non-IID (Dirichlet over labels).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edge_client.agent import DeviceAgent
from edge_client.config import DeviceProfile, FailureRates
from federated.data import fleet_partition, load_digits, train_holdout_split
from schemas.mqtt import MqttEndpoint


@dataclass(frozen=True)
class FleetSpec:
    """How many devices, how skewed their data is, and the seeds that make a run repeatable."""

    devices: int = 30
    alpha: float = 0.5
    seed: int = 0
    data_seed: int = 0
    holdout_fraction: float = 0.2
    failures: FailureRates = field(default_factory=FailureRates)
    low_battery_share: float = 0.1
    prefix: str = "dev"  # device ids are f"{prefix}-{i:04d}"
    slowdown_s: float = 0.0  # extra seconds each device takes per training

    def device_ids(self) -> list[str]:
        """The fleet's device ids, in order."""
        return [f"{self.prefix}-{i:04d}" for i in range(self.devices)]


def device_data(spec: FleetSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each device's local (x, y): the non-holdout digits split non-IID (any fleet size)."""
    x, y = load_digits()
    x_tr, y_tr, _, _ = train_holdout_split(
        x, y, holdout_fraction=spec.holdout_fraction, rng=np.random.default_rng(spec.data_seed)
    )
    parts = fleet_partition(
        y_tr, devices=spec.devices, alpha=spec.alpha, rng=np.random.default_rng(spec.seed)
    )
    return [(x_tr[idx], y_tr[idx]) for idx in parts]


def profiles(spec: FleetSpec) -> list[DeviceProfile]:
    """Varied devices: some plugged in, some on cellular, a few with a nearly empty battery."""
    rng = np.random.default_rng(spec.seed + 1)
    out = []
    for _ in range(spec.devices):
        low = rng.random() < spec.low_battery_share
        out.append(
            DeviceProfile(
                battery=float(rng.uniform(0.05, 0.12) if low else rng.uniform(0.3, 1.0)),
                charging=bool(not low and rng.random() < 0.4),
                network="wifi" if rng.random() < 0.8 else "cellular",
                memory_mb=int(rng.integers(256, 4096)),
                failures=spec.failures,
                slowdown_s=spec.slowdown_s,
            )
        )
    return out


class Fleet:
    """Run the agents as tasks; `async with Fleet(...)` waits until all are connected."""

    def __init__(
        self,
        spec: FleetSpec,
        endpoint: MqttEndpoint,
        *,
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        """Agents of `endpoint`; with `passwords` (device id -> password) each logs in as its
        own id, as on a broker with mosquitto/prod.conf."""
        self.spec = spec
        ids = spec.device_ids()
        self.agents = [
            DeviceAgent(
                device_id,
                x,
                y,
                endpoint=endpoint,
                password=(passwords or {}).get(device_id),
                profile=profile,
                seed=spec.seed * 100_003 + i,
            )
            for i, (device_id, (x, y), profile) in enumerate(
                zip(ids, device_data(spec), profiles(spec), strict=True)
            )
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Fleet:
        self._tasks = [asyncio.create_task(a.run()) for a in self.agents]
        await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in self.agents)), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                await agent.go_offline()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def agent(self, device_id: str) -> DeviceAgent:
        """One agent by id."""
        return next(a for a in self.agents if a.device_id == device_id)
