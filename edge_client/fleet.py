"""The fleet simulator: device agents in one process, each with its own connection and data.

A large fleet runs in several such processes (`python -m edge_client --processes N`), each
with a `shard` of the device ids (`plan.py`); a device's data, profile and seeds depend only
on the spec and its index, so the fleet is the same however it is split.

Data is sklearn's bundled digits set: the validator's holdout is split off first (same seed as
the validator's settings), the rest is split across devices non-IID (Dirichlet over labels).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edge_client.agent import DeviceAgent
from edge_client.config import DeviceProfile, FailureRates
from edge_client.plan import device_id
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
    prefix: str = "dev"  # device ids are f"{prefix}-{i:04d}" (plan.device_id)
    slowdown_s: float = 0.0  # extra seconds each device takes per training

    def device_ids(self) -> list[str]:
        """The fleet's device ids, in order."""
        return [device_id(self.prefix, i) for i in range(self.devices)]


def device_data(spec: FleetSpec, shard: range | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each device's local (x, y): the non-holdout digits split non-IID (any fleet size); only
    the devices of `shard` when given (the split is the whole fleet's either way)."""
    x, y = load_digits()
    x_tr, y_tr, _, _ = train_holdout_split(
        x, y, holdout_fraction=spec.holdout_fraction, rng=np.random.default_rng(spec.data_seed)
    )
    parts = fleet_partition(
        y_tr, devices=spec.devices, alpha=spec.alpha, rng=np.random.default_rng(spec.seed)
    )
    return [(x_tr[parts[i]], y_tr[parts[i]]) for i in shard or range(spec.devices)]


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


# Devices of one process that may be connecting at once: a thousand simultaneous CONNECTs
# (each blocking an executor thread in aiomqtt) only queue up and time out; a reconnect after
# a broker restart goes through the same gate.
CONNECTING_AT_ONCE = 64
# Seconds to wait for a process's devices to connect: a base and a share per device.
CONNECT_TIMEOUT_S = 30.0
CONNECT_S_PER_DEVICE = 0.02


class Fleet:
    """Run the agents as tasks; `async with Fleet(...)` waits until all are connected."""

    def __init__(
        self,
        spec: FleetSpec,
        endpoint: MqttEndpoint,
        *,
        passwords: Mapping[str, str] | None = None,
        shard: range | None = None,
        training_threads: int | None = None,
    ) -> None:
        """Agents of `endpoint`; with `passwords` (device id -> password) each logs in as its
        own id, as on a broker with mosquitto/prod.conf. `shard`: the indices of the spec's
        devices this process runs (all of them by default). The agents train on a pool of
        `training_threads` (default: the cores), not on the event loop's default executor,
        which aiomqtt's connects use."""
        self.spec = spec
        indices = shard or range(spec.devices)
        every = profiles(spec)
        self._pool = ThreadPoolExecutor(
            max_workers=training_threads or os.cpu_count() or 1, thread_name_prefix="train"
        )
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
        self.agents = [
            DeviceAgent(
                device_id(spec.prefix, i),
                x,
                y,
                endpoint=endpoint,
                password=(passwords or {}).get(device_id(spec.prefix, i)),
                profile=every[i],
                seed=spec.seed * 100_003 + i,
                executor=self._pool,
                connect_gate=gate,
            )
            for i, (x, y) in zip(indices, device_data(spec, indices), strict=True)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Fleet:
        self._tasks = [asyncio.create_task(a.run()) for a in self.agents]
        timeout = CONNECT_TIMEOUT_S + CONNECT_S_PER_DEVICE * len(self.agents)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(a.connected.wait() for a in self.agents)), timeout
            )
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Each says it goes offline (at once: a process holds thousands), then disconnects.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await asyncio.gather(*(a.go_offline() for a in self.agents), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def agent(self, device_id: str) -> DeviceAgent:
        """One agent by id."""
        return next(a for a in self.agents if a.device_id == device_id)
