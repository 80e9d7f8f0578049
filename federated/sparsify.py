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
    "prune_magnitude",
    "top_k",
]

INDEX_CODINGS = ("gaps", "bitmap")


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
    b = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if ends.size != count or (b.size and (ends.size == 0 or ends[-1] != b.size - 1)):
        raise PayloadError(f"index varints: expected {count} complete values in {b.size} bytes")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > max_len:
        raise PayloadError(f"index varint longer than {max_len} bytes")
    if np.any((lengths > 1) & (b[ends] == 0)):
        raise PayloadError("index varint is not in its shortest form")
    position = np.arange(b.size, dtype=np.int64) - np.repeat(starts, lengths)
    digits = (b & 0x7F).astype(np.int64) << (7 * position)
    return np.add.reduceat(digits, starts)


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


def decode_indices(coding: str, raw: bytes, *, n: int, count: int) -> np.ndarray:
    """Decode `count` indices into [0, n); raise PayloadError unless they are valid and sorted."""
    if coding == "bitmap":
        if len(raw) != -(-n // 8):
            raise PayloadError(f"index bitmap of {n} elements needs {-(-n // 8)} bytes")
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
        if np.any(bits[n:]):
            raise PayloadError("index bitmap has bits set past the last element")
        idx = np.flatnonzero(bits[:n]).astype(np.int64)
        if idx.size != count:
            raise PayloadError(f"index bitmap holds {idx.size} indices, expected {count}")
        return idx
    if coding != "gaps":
        raise PayloadError(f"unknown index coding {coding!r}")
    if len(raw) > 8 * count:
        raise PayloadError(f"{len(raw)} bytes of varints for {count} indices")
    max_len = max(1, -(-max(n, 1).bit_length() // 7))
    gaps = _unvarints(raw, count, max_len)
    if gaps.size and gaps.max() >= n:  # also keeps the running sum below 2**63
        raise PayloadError(f"index gap out of [0, {n})")
    idx = np.cumsum(gaps + 1) - 1
    if idx.size and (idx[-1] >= n or np.any(np.diff(idx) <= 0)):
        raise PayloadError(f"indices out of [0, {n}) or not strictly increasing")
    return idx
