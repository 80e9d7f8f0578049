"""FedAvg weighted by example count: the one streaming accumulator of weighted means."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from federated.errors import NumericsError, PayloadError, ShapeError

__all__ = ["FedAvgAccumulator", "check_update"]

# magic, has_sum flag, count, total_weight, number of float64 elements that follow
_HEADER = struct.Struct("<4sBQdQ")
_MAGIC = b"FAv1"


def _check_weight(num_examples: int) -> None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
        raise NumericsError(f"num_examples must be an integer, got {type(num_examples).__name__}")
    if num_examples <= 0:
        raise NumericsError(f"num_examples must be positive, got {num_examples}")


def check_update(delta_flat: np.ndarray, num_examples: int) -> np.ndarray:
    """What `FedAvgAccumulator.add` checks, alone: a 1-D, finite update and a positive
    integer weight (ShapeError, NumericsError). Returns the update as an array."""
    _check_weight(num_examples)
    vec = np.asarray(delta_flat)
    if vec.ndim != 1:
        raise ShapeError(f"expected a 1-D update, got shape {vec.shape}")
    if not np.all(np.isfinite(vec)):
        raise NumericsError("update contains non-finite values")
    return vec


@dataclass
class FedAvgAccumulator:
    """Running example-weighted sum of flat updates; memory O(model size), not O(updates)."""

    weighted_sum: np.ndarray | None = None
    total_weight: float = 0.0
    count: int = 0

    def add(self, delta_flat: np.ndarray, num_examples: int) -> None:
        """Fold one flat update trained on `num_examples` examples into the running sum."""
        vec = check_update(delta_flat, num_examples)
        if self.weighted_sum is not None and vec.shape != self.weighted_sum.shape:
            raise ShapeError(f"update has {vec.size} elements, expected {self.weighted_sum.size}")
        contribution = vec.astype(np.float64) * float(num_examples)
        if self.weighted_sum is None:
            self.weighted_sum = contribution
        else:
            self.weighted_sum += contribution
        self.total_weight += float(num_examples)
        self.count += 1

    def mean(self, dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
        """Return the weighted mean of everything added so far (float32 unless `dtype`)."""
        if self.weighted_sum is None or self.count == 0 or self.total_weight <= 0:
            raise NumericsError("no updates have been added")
        return (self.weighted_sum / self.total_weight).astype(dtype)

    def to_bytes(self) -> bytes:
        """Serialise as a fixed little-endian header followed by raw float64 bytes (no pickle)."""
        flat = np.zeros(0) if self.weighted_sum is None else self.weighted_sum
        header = _HEADER.pack(
            _MAGIC, self.weighted_sum is not None, self.count, self.total_weight, flat.size
        )
        return header + np.ascontiguousarray(flat, dtype="<f8").tobytes()

    @classmethod
    def from_bytes(cls, b: bytes) -> FedAvgAccumulator:
        """Rebuild an accumulator from `to_bytes` output; PayloadError if anything is off."""
        if not isinstance(b, bytes | bytearray | memoryview):
            raise PayloadError(f"accumulator must be bytes, got {type(b).__name__}")
        raw = bytes(b)
        if len(raw) < _HEADER.size:
            raise PayloadError(f"accumulator blob too short: {len(raw)} bytes")
        magic, has_sum, count, total, size = _HEADER.unpack_from(raw)
        if magic != _MAGIC or has_sum not in (0, 1):
            raise PayloadError("accumulator blob has a bad header")
        if len(raw) != _HEADER.size + 8 * size:
            raise PayloadError(f"accumulator blob is {len(raw)} bytes, header says {size} values")
        if not np.isfinite(total) or total < 0 or (count == 0) != (total == 0):
            raise PayloadError(f"inconsistent accumulator totals: count={count} weight={total}")
        if (has_sum == 0) != (count == 0) or (has_sum == 0 and size != 0):
            raise PayloadError("accumulator sum presence does not match its count")
        values = np.frombuffer(raw, dtype="<f8", offset=_HEADER.size).astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise PayloadError("accumulator sum contains non-finite values")
        return cls(weighted_sum=values if has_sum else None, total_weight=total, count=count)
