"""Progress: what a round's report draws, kept per iteration as the round goes.

- The validator's holdout metrics of each iteration's aggregate. The first score stands: a
  replay scores the same model again and changes nothing.
- The size of each weight payload, per iteration, direction and device. The distributor
  records what it sent; the aggregator records an update's size in the transaction that folds
  it (`aggregates.py`), so each update counts once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from services.runtime import keys
from services.runtime.store._base import StoreBase, plain, text_hash

Direction = Literal["up", "down"]


def traffic_field(it: int, direction: Direction, device_id: str) -> str:
    """The traffic hash's field for one payload (device ids hold no colon)."""
    return f"{it}:{direction}:{device_id}"


@dataclass(frozen=True)
class Payload:
    """One weight payload: to (`down`) or from (`up`) a device, in an iteration."""

    iteration: int
    direction: Direction
    device_id: str
    size: int


class ProgressStore(StoreBase):
    """Per-iteration holdout metrics and payload sizes of a round."""

    async def record_accuracy(self, round_id: str, it: int, metrics: Mapping[str, float]) -> bool:
        """Keep iteration `it`'s holdout metrics unless kept already; True when this call did."""
        key = keys.accuracy(round_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, str(it), json.dumps(dict(metrics)))
            pipe.expire(key, self.ttl_s)
            first, _ = await pipe.execute()
        return bool(first)

    async def scored(self, round_id: str, it: int) -> bool:
        """Whether iteration `it`'s holdout metrics are kept."""
        return bool(await self.redis.hexists(keys.accuracy(round_id), str(it)))

    async def accuracies(self, round_id: str) -> dict[int, dict[str, float]]:
        """Each scored iteration's holdout metrics, by iteration."""
        scores = text_hash(await self.redis.hgetall(keys.accuracy(round_id)))
        return {int(it): json.loads(raw) for it, raw in sorted(scores.items(), key=_by_int)}

    async def record_traffic(
        self, round_id: str, it: int, direction: Direction, sizes: Mapping[str, int]
    ) -> None:
        """Keep the payload sizes (bytes, by device) of iteration `it` going `direction`."""
        if not sizes:
            return
        key = keys.traffic(round_id)
        fields = {traffic_field(it, direction, d): n for d, n in sizes.items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=plain(fields))
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def traffic(self, round_id: str) -> list[Payload]:
        """Every recorded payload of the round, by iteration, direction and device."""
        out = []
        for name, size in text_hash(await self.redis.hgetall(keys.traffic(round_id))).items():
            it, kind, device_id = name.split(":", 2)
            direction: Direction = "up" if kind == "up" else "down"
            out.append(Payload(int(it), direction, device_id, int(size)))
        return sorted(out, key=lambda p: (p.iteration, p.direction, p.device_id))


def _by_int(item: tuple[str, str]) -> int:
    return int(item[0])
