"""Per-block quantization to 8, 4 or 2 bits with unbiased stochastic rounding, and bit packing.

A value x in a block with scale s = max|block| / qmax becomes the integer code
floor(x / s + u), u ~ U[0, 1), clipped to [-qmax, qmax], so E[code * s] = x and
|code * s - x| < s. qmax is 127 (8 bits), 7 (4 bits) or 1 (2 bits: ternary); zero is exact.
On the wire, codes are offset by qmax to unsigned and packed 8 / bits to a byte, little end first.
"""

from __future__ import annotations

import numpy as np

from federated.errors import NumericsError, ShapeError

__all__ = [
    "BITS",
    "dequantize",
    "dequantize_int8",
    "num_blocks",
    "pack_codes",
    "packed_size",
    "qmax",
    "quantize",
    "quantize_int8",
    "unpack_codes",
]

BITS = (8, 4, 2)
_QMAX = {8: 127, 4: 7, 2: 1}


def qmax(bits: int) -> int:
    """Return the largest code magnitude for `bits` (127, 7 or 1)."""
    if bits not in _QMAX:
        raise NumericsError(f"bits must be one of {BITS}, got {bits!r}")
    return _QMAX[bits]


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


def quantize(
    x: np.ndarray, *, bits: int, block: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a 1-D vector to int8 codes in [-qmax, qmax] and one float32 scale per block.

    The scale of a block is max|x| / qmax (0 for an all-zero block). Rounding is stochastic,
    so the dequantized value is an unbiased estimate of x and differs from it by less than
    one scale.
    """
    top = qmax(bits)
    vec = np.asarray(x)
    if vec.ndim != 1:
        raise ShapeError(f"expected a 1-D vector, got shape {vec.shape}")
    vec = vec.astype(np.float32)
    if not np.all(np.isfinite(vec)):
        raise NumericsError("cannot quantize non-finite values")
    blocks = _padded(vec, block).astype(np.float64)
    largest = np.abs(blocks).max(axis=1, initial=0.0)
    scales = (largest / top).astype(np.float32)
    # A subnormal scale may round far down (or to zero); one ulp up restores |x| / s <= qmax.
    low = (scales < np.finfo(np.float32).tiny) & (scales.astype(np.float64) * top < largest)
    scales[low] = np.nextafter(scales[low], np.float32(np.inf))
    safe = np.where(scales > 0, scales, 1.0).astype(np.float64)[:, None]
    # Clip only guards the float32 rounding of a normal scale: |x| / s <= qmax up to one ulp.
    q = np.clip(np.floor(blocks / safe + rng.random(blocks.shape)), -top, top)
    return q.astype(np.int8).ravel()[: vec.size], scales


def dequantize(q: np.ndarray, scales: np.ndarray, *, block: int) -> np.ndarray:
    """Return q * scale (float32), using the scale of each element's block."""
    qs = np.asarray(q)
    sc = np.asarray(scales, dtype=np.float32)
    if qs.ndim != 1 or sc.ndim != 1 or sc.size != num_blocks(qs.size, block):
        raise ShapeError(
            f"{qs.size} values need {num_blocks(qs.size, block)} scales of block {block}, "
            f"got {sc.size}"
        )
    out = qs.astype(np.float32)
    # Scale whole blocks through a view and the short tail by the last scale: no per-element
    # copy of the scales, so a huge `block` over a few values costs nothing.
    whole = qs.size // block
    out[: whole * block].reshape(whole, block)[...] *= sc[:whole, None]
    if whole * block < qs.size:
        out[whole * block :] *= sc[-1]
    return out


def quantize_int8(
    x: np.ndarray, *, block: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize to int8 codes in [-127, 127]; `quantize` with bits=8."""
    return quantize(x, bits=8, block=block, rng=rng)


def dequantize_int8(q: np.ndarray, scales: np.ndarray, *, block: int) -> np.ndarray:
    """Return q * scale (float32); `dequantize` of int8 codes."""
    return dequantize(q, scales, block=block)


def packed_size(count: int, bits: int) -> int:
    """Return the bytes `count` codes of `bits` bits take when packed."""
    qmax(bits)
    return -(-count * bits // 8)


def pack_codes(q: np.ndarray, *, bits: int) -> bytes:
    """Pack codes in [-qmax, qmax] into `bits` bits each (little end of a byte first)."""
    top = qmax(bits)
    codes = np.asarray(q)
    if codes.ndim != 1:
        raise ShapeError(f"expected a 1-D vector of codes, got shape {codes.shape}")
    if codes.size and (codes.min() < -top or codes.max() > top):
        raise NumericsError(f"codes must lie in [-{top}, {top}] for {bits} bits")
    unsigned = (codes.astype(np.int16) + top).astype(np.uint8)
    if bits == 8:
        return unsigned.tobytes()
    per_byte = 8 // bits
    flat = np.zeros(packed_size(codes.size, bits) * per_byte, dtype=np.uint8)
    flat[: codes.size] = unsigned
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits)[None, :]
    lanes = flat.reshape(-1, per_byte) << shifts
    return np.bitwise_or.reduce(lanes, axis=1).astype(np.uint8).tobytes()


def unpack_codes(raw: bytes, *, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_codes`; raise NumericsError on a wrong length, a code out of range or
    non-zero padding."""
    top = qmax(bits)
    if count < 0 or len(raw) != packed_size(count, bits):
        raise ShapeError(f"{count} codes of {bits} bits need {packed_size(count, bits)} bytes")
    packed = np.frombuffer(raw, dtype=np.uint8)
    if bits == 8:
        unsigned = packed
    else:
        per_byte = 8 // bits
        shifts = (np.arange(per_byte, dtype=np.uint8) * bits)[None, :]
        lanes = (packed[:, None] >> shifts) & np.uint8((1 << bits) - 1)
        flat = lanes.ravel()
        if np.any(flat[count:]):
            raise NumericsError("non-zero padding after the last code")
        unsigned = flat[:count]
    if unsigned.size and unsigned.max() > 2 * top:
        raise NumericsError(f"code out of range for {bits} bits")
    # unsigned - qmax wraps modulo 256 to the same bits as the signed code.
    return (unsigned - np.uint8(top)).view(np.int8)
