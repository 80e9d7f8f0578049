"""This instance's running FedAvg sums, in memory: one per open iteration.

Redis holds every accepted update (`AggregateStore.buffer_update`); this holds their sum, so
folding an update costs one numpy add instead of a model-sized read and write. The sum is a
cache of the buffer, never the truth: an update enters it only after its buffering
succeeded in this process, so it never holds an update Redis does not, and the iteration's
close adds from the buffer whatever it lacks (updates another instance took, or that came
before this process started). Memory: one float64 vector per iteration kept, at most `keep`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from federated.aggregate import FedAvgAccumulator


@dataclass
class Partial:
    """The sum of some of an iteration's updates, and whose they are."""

    acc: FedAvgAccumulator = field(default_factory=FedAvgAccumulator)
    devices: set[str] = field(default_factory=set)

    def copy(self) -> Partial:
        """An independent copy (the close adds to it; the cached one stays as it was)."""
        s = self.acc.weighted_sum
        acc = FedAvgAccumulator(
            weighted_sum=None if s is None else s.copy(),
            total_weight=self.acc.total_weight,
            count=self.acc.count,
        )
        return Partial(acc, set(self.devices))

    def add(self, device_id: str, delta: np.ndarray, weight: int) -> None:
        """Fold one device's flat update in (once: a device already in is ignored)."""
        if device_id in self.devices:
            return
        self.acc.add(delta, weight)
        self.devices.add(device_id)


class RunningSums:
    """Partial sums by (round, iteration), the least recently used dropped beyond `keep`."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._sums: OrderedDict[tuple[str, int], Partial] = OrderedDict()

    def add(self, round_id: str, it: int, device_id: str, delta: np.ndarray, weight: int) -> None:
        """Fold a buffered update into the iteration's sum."""
        key = (round_id, it)
        partial = self._sums.get(key)
        if partial is None:
            partial = self._sums[key] = Partial()
            while len(self._sums) > self.keep:
                self._sums.popitem(last=False)
        self._sums.move_to_end(key)
        partial.add(device_id, delta, weight)

    def get(self, round_id: str, it: int) -> Partial:
        """A copy of the iteration's sum (empty if this instance holds none)."""
        found = self._sums.get((round_id, it))
        return Partial() if found is None else found.copy()

    def drop(self, round_id: str, it: int | None = None) -> None:
        """Forget one iteration's sum, or all of a round's."""
        for key in [k for k in self._sums if k[0] == round_id and it in (None, k[1])]:
            del self._sums[key]
