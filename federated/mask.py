"""A static sparse mask that server and devices derive from a seed, so positions cost no bytes.

Static sparse training (the connectivity of Mocanu et al. 2018 and RigL's Erdős-Rényi-kernel
layer densities, Evci et al. 2020, without the rewiring): every weight matrix keeps a fixed,
seeded random subset of its entries for the whole round. Training touches only those entries,
so every model, delta and update in the round is zero elsewhere, and a payload carries only the
values at the mask's positions; the receiver rebuilds the positions from (seed, densities).

Entry i of tensor j is kept when the i-th little-endian uint32 of the ChaCha20 keystream (RFC
8439, zero nonce) keyed by ``sha256(b"fedsaga/mask/v1" + seed as uint64 LE + j as uint32 LE)``
is below ``floor(density_j * 2**32)``. Both are fully specified algorithms, so a device written
in any language rebuilds the same mask; numpy's generators promise no such thing. Each entry is
an independent Bernoulli draw, so the count kept varies a little around density * size.
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
from dataclasses import dataclass

import numpy as np

from federated.errors import NumericsError, PayloadError
from federated.params import Params, ParamSpec
from federated.secagg.prg import expand_mask

__all__ = ["SeededMask", "erk_densities"]

_DOMAIN = b"fedsaga/mask/v1"
_MAX_SEED = 2**64 - 1  # the seed travels as a uint64


def erk_densities(spec: ParamSpec, density: float, *, min_ndim: int = 2) -> tuple[float, ...]:
    """Per-tensor densities keeping `density` of all weight entries, Erdős-Rényi-kernel style.

    A matrix of shape (n_in, n_out) gets a density proportional to (n_in + n_out) / (n_in *
    n_out), capped at 1, so small layers (the output layer) stay dense and the wide ones carry
    the sparsity. Tensors of fewer than `min_ndim` dimensions (biases) are kept whole and do not
    count towards `density`.
    """
    if not 0.0 < density <= 1.0:
        raise NumericsError(f"density must be in (0, 1], got {density}")
    sizes = [math.prod(shape) for _, shape in spec]
    weights = [i for i, (_, shape) in enumerate(spec) if len(shape) >= min_ndim and sizes[i]]
    out = [1.0] * len(spec)
    budget = density * sum(sizes[i] for i in weights)
    free = list(weights)
    # Raise the scale until the budget is spent; a tensor that would pass density 1 is capped
    # and its entries leave the budget of the rest (at most one pass per tensor).
    while free:
        raw = {i: sum(spec[i][1]) / sizes[i] for i in free}
        eps = budget / sum(raw[i] * sizes[i] for i in free)
        capped = [i for i in free if eps * raw[i] >= 1.0]
        if not capped:
            for i in free:
                out[i] = eps * raw[i]
            break
        for i in capped:
            budget -= sizes[i]
            free.remove(i)
    return tuple(out)


@dataclass(frozen=True)
class SeededMask:
    """The mask of one round: a seed and one keep-probability per tensor, in spec order."""

    seed: int
    densities: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            seed = operator.index(self.seed)
        except TypeError:
            seed = -1
        if isinstance(self.seed, bool) or not 0 <= seed <= _MAX_SEED:
            raise NumericsError(f"mask seed must be an integer in [0, 2**64), got {self.seed!r}")
        if not all(math.isfinite(d) and 0.0 < d <= 1.0 for d in self.densities):
            raise NumericsError(f"mask densities must be in (0, 1], got {self.densities}")

    @classmethod
    def erk(cls, spec: ParamSpec, density: float, seed: int) -> SeededMask:
        """The mask keeping `density` of the weights of `spec` with ERK layer densities."""
        return cls(seed, erk_densities(spec, density))

    def flat(self, spec: ParamSpec) -> np.ndarray:
        """The boolean mask over the flattened parameters of `spec`."""
        if len(spec) != len(self.densities):
            raise NumericsError(f"mask has {len(self.densities)} densities for {len(spec)} tensors")
        parts = []
        for j, ((_, shape), density) in enumerate(zip(spec, self.densities, strict=True)):
            size = math.prod(shape)
            if density >= 1.0:
                parts.append(np.ones(size, dtype=bool))
                continue
            key = hashlib.sha256(_DOMAIN + struct.pack("<QI", self.seed, j)).digest()
            # density < 1, so the threshold is below 2**32 and fits a uint32 comparison
            parts.append(expand_mask(key, size) < np.uint64(math.floor(density * 2**32)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def params(self, spec: ParamSpec) -> Params:
        """The mask as float32 tensors of ones and zeros, shaped like `spec`."""
        flat = self.flat(spec).astype(np.float32)
        out: Params = {}
        offset = 0
        for name, shape in spec:
            size = math.prod(shape)
            out[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out

    def apply(self, params: Params) -> Params:
        """`params` with every entry outside the mask set to zero."""
        spec = tuple((n, tuple(int(d) for d in a.shape)) for n, a in params.items())
        ones = self.params(spec)
        return {k: (np.asarray(v, dtype=np.float32) * ones[k]) for k, v in params.items()}

    def rescaled(self, params: Params) -> Params:
        """`params` masked, each tensor divided by sqrt(its density): a sparse-aware init.

        A unit of a layer kept at density d sees about d * fan_in inputs, so He-initialised
        weights would shrink its activations by sqrt(d) per layer; rescaling restores the
        variance He initialisation aims for (Evci et al. 2022).
        """
        masked = self.apply(params)
        return {
            k: (v / np.float32(math.sqrt(d))).astype(np.float32)
            for (k, v), d in zip(masked.items(), self.densities, strict=True)
        }

    def to_bytes(self) -> bytes:
        """Wire form: the seed as a little-endian uint64, then one float64 per tensor."""
        return struct.pack(f"<Q{len(self.densities)}d", self.seed, *self.densities)

    @classmethod
    def from_bytes(cls, raw: bytes, tensors: int) -> SeededMask:
        """Parse `to_bytes` for a spec of `tensors` tensors; raise PayloadError if it is bad."""
        if len(raw) != 8 + 8 * tensors:
            raise PayloadError(f"a mask of {tensors} tensors takes {8 + 8 * tensors} bytes")
        seed, *densities = struct.unpack(f"<Q{tensors}d", raw)
        try:
            return cls(seed, tuple(densities))
        except NumericsError as exc:
            raise PayloadError(f"bad mask: {exc}") from exc
