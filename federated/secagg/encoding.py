"""Fixed-point encoding of float vectors into the ring Z_{2^32}, and decoding of their sum.

A value x is clipped to [-clip, clip] and becomes q = round(x * scale), an integer with
|q| <= levels = floor((2^31 - 1) / max_clients) and scale = levels / clip; q is stored mod 2^32
as uint32. The sum of at most `max_clients` codes therefore has |sum| <= max_clients * levels
< 2^31 (the bound scale * clip * n < 2^31), so reading the uint32 total as int32 gives the exact
integer sum and decoding cannot wrap. Each code is off by at most 1 / (2 * scale) from the
clipped input, so a decoded sum of n inputs is off by at most n / (2 * scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federated.errors import NumericsError, ShapeError

__all__ = ["RING_BITS", "FixedPoint"]

RING_BITS = 32
_HALF_RING = 2 ** (RING_BITS - 1)


@dataclass(frozen=True)
class FixedPoint:
    """Clip-and-scale encoding whose sum over `max_clients` clients cannot overflow."""

    clip: float
    max_clients: int

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise NumericsError(f"clip must be a positive finite number, got {self.clip!r}")
        if not 1 <= self.max_clients < _HALF_RING:
            raise NumericsError(f"max_clients must be in [1, 2^31), got {self.max_clients}")

    @property
    def levels(self) -> int:
        """Return the largest code magnitude: floor((2^31 - 1) / max_clients)."""
        return (_HALF_RING - 1) // self.max_clients

    @property
    def scale(self) -> float:
        """Return codes per unit: levels / clip."""
        return self.levels / self.clip

    @property
    def resolution(self) -> float:
        """Return the value of one code step, 1 / scale."""
        return self.clip / self.levels

    def encode(self, x: ArrayLike) -> NDArray[np.uint32]:
        """Clip a 1-D float vector to [-clip, clip] and return round(x * scale) mod 2^32."""
        vec = np.asarray(x, dtype=np.float64)
        if vec.ndim != 1:
            raise ShapeError(f"expected a 1-D vector, got shape {vec.shape}")
        if not np.all(np.isfinite(vec)):
            raise NumericsError("cannot encode non-finite values")
        codes = np.rint(np.clip(vec, -self.clip, self.clip) * self.scale).astype(np.int64)
        # rint of levels * (1 + ulp) stays levels, but enforce the bound in integers anyway.
        np.clip(codes, -self.levels, self.levels, out=codes)
        return codes.astype(np.uint32)

    def decode_sum(self, total: ArrayLike) -> NDArray[np.float64]:
        """Return the float sum that a uint32 ring total of at most `max_clients` codes encodes."""
        ring = np.asarray(total)
        if ring.dtype != np.uint32:
            raise NumericsError(f"expected a uint32 ring vector, got {ring.dtype}")
        return ring.view(np.int32).astype(np.float64) / self.scale
