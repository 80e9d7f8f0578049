"""Per-block int8 quantization with unbiased stochastic rounding."""

from __future__ import annotations

import numpy as np

from federated.errors import NumericsError, ShapeError

__all__ = ["dequantize_int8", "num_blocks", "quantize_int8"]

_QMAX = 127


def num_blocks(length: int, block: int) -> int:
    """Return how many blocks of `block` elements cover `length` elements."""
    if block < 1:
        raise NumericsError(f"block must be positive, got {block}")
    return -(-length // block)


def _padded(x: np.ndarray, block: int) -> np.ndarray:
    nb = num_blocks(x.size, block)
    out = np.zeros(nb * block, dtype=x.dtype)
    out[: x.size] = x
    return out.reshape(nb, block)


def quantize_int8(
    x: np.ndarray, *, block: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a 1-D float32 vector to int8 with one float32 scale per block.

    The scale of a block is max|x| / 127 (0 for an all-zero block). Rounding is stochastic
    (floor(v + u), u ~ U[0, 1)), so the dequantized value is an unbiased estimate of x and
    differs from it by less than one scale.
    """
    vec = np.asarray(x)
    if vec.ndim != 1:
        raise ShapeError(f"expected a 1-D vector, got shape {vec.shape}")
    vec = vec.astype(np.float32)
    if not np.all(np.isfinite(vec)):
        raise NumericsError("cannot quantize non-finite values")
    blocks = _padded(vec, block).astype(np.float64)
    scales = (np.abs(blocks).max(axis=1, initial=0.0) / _QMAX).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float64)[:, None]
    scaled = blocks / safe
    # Clip only guards the float32 rounding of the scale; |scaled| <= 127 up to one ulp.
    q = np.clip(np.floor(scaled + rng.random(scaled.shape)), -_QMAX, _QMAX)
    return q.astype(np.int8).ravel()[: vec.size], scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray, *, block: int) -> np.ndarray:
    """Return q * scale (float32), using the scale of each element's block."""
    qs = np.asarray(q)
    sc = np.asarray(scales, dtype=np.float32)
    if qs.ndim != 1 or sc.ndim != 1 or sc.size != num_blocks(qs.size, block):
        raise ShapeError(
            f"{qs.size} values need {num_blocks(qs.size, block)} scales of block {block}, "
            f"got {sc.size}"
        )
    return qs.astype(np.float32) * np.repeat(sc, block)[: qs.size]
