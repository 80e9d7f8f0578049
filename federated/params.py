"""Named float32 tensors (`Params`) and the small algebra the rest of the package needs."""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np

from federated.errors import NumericsError, ShapeError

__all__ = [
    "ParamSpec",
    "Params",
    "add",
    "check_finite",
    "clip_update",
    "digest",
    "flatten",
    "l2_norm",
    "spec_of",
    "sub",
    "unflatten",
    "zeros_like",
]

Params = dict[str, np.ndarray]
"""Ordered mapping of tensor name to float32 array; dict order is the wire order."""

ParamSpec = tuple[tuple[str, tuple[int, ...]], ...]
"""Names and shapes of a `Params`, in order."""

# Scaling by C / norm and rounding each element to float32 can overshoot C by one ulp
# (relative 2^-24); shrinking by 2^-22 keeps the clipped norm strictly within the bound.
_CLIP_SAFETY = 1.0 - 2.0**-22


def spec_of(params: Params) -> ParamSpec:
    """Return the ordered (name, shape) pairs of `params`."""
    return tuple((name, tuple(int(d) for d in arr.shape)) for name, arr in params.items())


def flatten(params: Params) -> np.ndarray:
    """Concatenate all tensors, in dict order, into one 1-D float32 vector."""
    if not params:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in params.values()])


def unflatten(vec: np.ndarray, spec: ParamSpec) -> Params:
    """Split a 1-D vector back into float32 tensors named and shaped by `spec`."""
    flat = np.asarray(vec)
    sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in spec]
    if flat.ndim != 1 or flat.size != sum(sizes):
        raise ShapeError(f"vector of shape {flat.shape} does not fit spec of {sum(sizes)} elements")
    out: Params = {}
    offset = 0
    for (name, shape), size in zip(spec, sizes, strict=True):
        out[name] = flat[offset : offset + size].astype(np.float32).reshape(shape)
        offset += size
    return out


def digest(params: Params) -> str:
    """Return the sha256 hex of names, shapes and little-endian float32 bytes (content address)."""
    h = hashlib.sha256()
    h.update(struct.pack("<Q", len(params)))
    for name, arr in params.items():
        raw_name = name.encode("utf-8")
        a = np.ascontiguousarray(arr, dtype="<f4")
        # Length prefixes keep the encoding unambiguous (no name/shape can bleed into the next).
        h.update(struct.pack("<Q", len(raw_name)))
        h.update(raw_name)
        h.update(struct.pack(f"<Q{a.ndim}Q", a.ndim, *a.shape))
        h.update(a.tobytes())
    return h.hexdigest()


def _check_same_spec(a: Params, b: Params) -> None:
    if spec_of(a) != spec_of(b):
        raise ShapeError(f"parameter specs differ: {spec_of(a)} vs {spec_of(b)}")


def add(a: Params, b: Params) -> Params:
    """Return `a + b` tensor by tensor (float32); the specs must match."""
    _check_same_spec(a, b)
    return {k: np.add(a[k], b[k], dtype=np.float32) for k in a}


def sub(a: Params, b: Params) -> Params:
    """Return `a - b` tensor by tensor (float32); the specs must match."""
    _check_same_spec(a, b)
    return {k: np.subtract(a[k], b[k], dtype=np.float32) for k in a}


def zeros_like(params: Params) -> Params:
    """Return float32 zeros with the same names and shapes."""
    return {k: np.zeros(v.shape, dtype=np.float32) for k, v in params.items()}


def check_finite(params: Params) -> None:
    """Raise NumericsError naming the first tensor holding NaN or infinity."""
    for name, arr in params.items():
        if not np.all(np.isfinite(arr)):
            raise NumericsError(f"tensor {name!r} contains non-finite values")


def l2_norm(params: Params) -> float:
    """L2 norm over all tensors together, in float64."""
    return float(
        np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in params.values()))
    )


def clip_update(delta: Params, clip_norm: float) -> tuple[Params, bool]:
    """Scale `delta` down to L2 norm at most `clip_norm`; also say whether it was scaled."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise NumericsError(f"clip_norm must be positive and finite, got {clip_norm}")
    norm = l2_norm(delta)
    if not math.isfinite(norm):
        raise NumericsError("update contains non-finite values")
    if norm <= clip_norm:
        return delta, False
    scale = clip_norm / norm * _CLIP_SAFETY
    return {
        k: (np.asarray(v, dtype=np.float64) * scale).astype(np.float32) for k, v in delta.items()
    }, True
