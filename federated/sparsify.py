"""Top-k sparsification with error feedback, magnitude pruning, and compact index coding.

Error feedback (Seide et al. 2014; Stich et al. 2018): the device adds what it did not send
last time (the residual) to its next update before compressing, so nothing is lost, only late.

Indices travel sorted, in whichever of two codings zstd shrinks more (chosen per payload):

- ``gaps``: LEB128 varints of the first index, then of each gap minus one. Any byte string
  that decodes is strictly increasing, so duplicate or unsorted indices cannot be expressed.
- ``bitmap``: one bit per element, little end of each byte first, padding bits zero.

Varints win on sparse vectors (about one byte per index at 1% density); the bitmap wins on
dense ones (one bit per element, whatever the density).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard

from federated.errors import NumericsError, PayloadError
from federated.params import Params, spec_of, sub, zeros_like

__all__ = [
    "INDEX_CODINGS",
    "ErrorFeedback",
    "decode_indices",
    "encode_indices",
    "max_index_bytes",
    "prune_magnitude",
    "top_k",
]

INDEX_CODINGS = ("gaps", "bitmap")
_CHUNK = 1 << 16  # varints decoded at a time


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Return the sorted int64 indices of the `k` entries of `x` with the largest magnitude."""
    vec = np.asarray(x).ravel()
    if not 0 <= k <= vec.size:
        raise NumericsError(f"k must be in [0, {vec.size}], got {k}")
    if k == vec.size:
        return np.arange(vec.size, dtype=np.int64)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = np.argpartition(np.abs(vec), vec.size - k)[vec.size - k :]
    return np.sort(chosen).astype(np.int64)


def prune_magnitude(params: Params, sparsity: float, *, min_ndim: int = 2) -> Params:
    """Zero the floor(sparsity * size) smallest-magnitude entries of every weight tensor.

    Tensors of fewer than `min_ndim` dimensions (biases, by default) are kept whole: they are
    few and pruning them buys little.
    """
    if not 0.0 <= sparsity < 1.0:
        raise NumericsError(f"sparsity must be in [0, 1), got {sparsity}")
    out: Params = {}
    for name, arr in params.items():
        flat = np.asarray(arr, dtype=np.float32).ravel()
        if np.ndim(arr) < min_ndim:
            out[name] = flat.reshape(np.shape(arr))
            continue
        keep = top_k(flat, flat.size - int(sparsity * flat.size))
        pruned = np.zeros_like(flat)
        pruned[keep] = flat[keep]
        out[name] = pruned.reshape(arr.shape)
    return out


@dataclass
class ErrorFeedback:
    """One device's memory of what its lossy encoder has not yet delivered."""

    residual: Params | None = None

    def compensate(self, delta: Params) -> Params:
        """Return the update to compress: `delta` plus the residual left from last time."""
        if self.residual is None or spec_of(self.residual) != spec_of(delta):
            self.residual = zeros_like(delta)
        return {k: np.add(v, self.residual[k], dtype=np.float32) for k, v in delta.items()}

    def record(self, wanted: Params, sent: Params) -> None:
        """Keep `wanted - sent` (what the receiver did not get) for the next update."""
        self.residual = sub(wanted, sent)


def _varints(values: np.ndarray) -> bytes:
    v = values.astype(np.uint64)
    if v.size == 0:
        return b""
    lengths = np.ones(v.size, dtype=np.int64)
    rest = v >> np.uint64(7)
    while np.any(rest):
        lengths += rest > 0
        rest >>= np.uint64(7)
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for j in range(int(lengths.max())):
        sel = lengths > j
        low = (v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (lengths[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = (low | more).astype(np.uint8)
    return out.tobytes()


def _unvarints(raw: bytes, count: int, max_len: int) -> np.ndarray:
    """Decode `count` varints; working memory is the int64 output plus one byte per input byte.

    The ends of the varints are found first and counted before any array of their size is
    made; the values then overwrite the ends, `_CHUNK` at a time, in the same array.
    """
    b = np.frombuffer(raw, dtype=np.uint8)
    last = b < 0x80
    if np.count_nonzero(last) != count or (b.size and not last[-1]):
        raise PayloadError(f"index varints: expected {count} complete values in {b.size} bytes")
    out = np.flatnonzero(last).astype(np.int64, copy=False)
    del last
    prev_end = -1
    for lo in range(0, count, _CHUNK):
        ends = out[lo : lo + _CHUNK]
        starts = np.empty_like(ends)
        starts[0] = prev_end + 1
        starts[1:] = ends[:-1] + 1
        lengths = ends - starts + 1
        longest = int(lengths.max())
        if longest > max_len:
            raise PayloadError(f"index varint longer than {max_len} bytes")
        if np.any((lengths > 1) & (b[ends] == 0)):
            raise PayloadError("index varint is not in its shortest form")
        values = np.zeros(ends.size, dtype=np.int64)
        for j in range(longest):
            sel = lengths > j
            values[sel] |= (b[starts[sel] + j] & 0x7F).astype(np.int64) << (7 * j)
        prev_end = int(ends[-1])
        out[lo : lo + _CHUNK] = values
    return out


def _encode_as(coding: str, idx: np.ndarray, n: int) -> bytes:
    if coding == "bitmap":
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        return np.packbits(mask, bitorder="little").tobytes()
    gaps = np.diff(idx, prepend=-1) - 1
    return _varints(gaps)


def encode_indices(idx: np.ndarray, n: int, *, level: int = 3) -> tuple[str, bytes]:
    """Encode sorted unique indices into [0, n) as (coding, bytes), the smaller after zstd."""
    index = np.asarray(idx, dtype=np.int64)
    if index.ndim != 1 or (index.size and (index[0] < 0 or index[-1] >= n)):
        raise NumericsError(f"indices must be a 1-D vector within [0, {n})")
    if np.any(np.diff(index) <= 0):
        raise NumericsError("indices must be strictly increasing")
    compressor = zstandard.ZstdCompressor(level=level)
    encoded = {c: _encode_as(c, index, n) for c in INDEX_CODINGS}
    best = min(INDEX_CODINGS, key=lambda c: (len(compressor.compress(encoded[c])), c))
    return best, encoded[best]


def max_index_bytes(coding: str, *, n: int, count: int) -> int:
    """The most bytes a valid encoding of `count` indices into [0, n) can take.

    A decoder checks its input against this before allocating anything. A gap g takes
    1 + floor(log128 g) <= 1 + g // 128 bytes as a varint, and the gaps of `count` sorted
    indices below n sum to at most n - count.
    """
    if coding == "bitmap":
        return -(-n // 8)
    if coding == "gaps":
        return count + max(n - count, 0) // 128
    raise PayloadError(f"unknown index coding {coding!r}")


def decode_indices(coding: str, raw: bytes, *, n: int, count: int) -> np.ndarray:
    """Decode `count` indices into [0, n); raise PayloadError unless they are valid and sorted.

    Memory: the int64 output plus about one byte per element of the bitmap or byte of varints,
    never more than `max_index_bytes` allows; nothing is allocated before that size is checked.
    """
    if not 0 <= count <= n:
        raise PayloadError(f"{count} indices cannot lie in [0, {n})")
    limit = max_index_bytes(coding, n=n, count=count)
    if coding == "bitmap":
        if len(raw) != limit:
            raise PayloadError(f"index bitmap of {n} elements needs {limit} bytes")
        packed = np.frombuffer(raw, dtype=np.uint8)
        if n % 8 and packed[-1] >> (n % 8):
            raise PayloadError("index bitmap has bits set past the last element")
        bits = np.unpackbits(packed, count=n, bitorder="little")
        held = int(np.count_nonzero(bits))
        if held != count:
            raise PayloadError(f"index bitmap holds {held} indices, expected {count}")
        return np.flatnonzero(bits).astype(np.int64, copy=False)
    if len(raw) > limit:
        raise PayloadError(f"{len(raw)} bytes of varints for {count} indices below {n}")
    max_len = max(1, -(-max(n, 1).bit_length() // 7))
    idx = _unvarints(raw, count, max_len)
    # Each gap below n keeps the running sum below count * n, far from 2**63.
    if idx.size and idx.max() >= n:
        raise PayloadError(f"index gap out of [0, {n})")
    # gap - 1 on the wire: index = running sum of (gap + 1) - 1, strictly increasing.
    idx += 1
    np.cumsum(idx, out=idx)
    idx -= 1
    if idx.size and idx[-1] >= n:
        raise PayloadError(f"indices out of [0, {n})")
    return idx
