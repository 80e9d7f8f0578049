"""Payload format version 2: dense quantized, top-k sparse and pruned deltas, one flat vector.

Wire document (a msgpack map in a zstd frame that declares its content size, as version 1)::

    {"v": 2, "method": "quant" | "topk" | "prune" | "mask", "bits": 32 | 8 | 4 | 2, "block": int,
     "keep": float, "base": bin(32) | None, "digest": bin(32),
     "spec": [[name, [dim, ...]], ...],
     "index": None | [coding, nnz, bin],
     "values": bin, "scales": bin}

The tensors named in `spec` are concatenated in order into one delta vector of n elements.
"quant" sends all n entries (`index` is None); "topk" sends the ceil(keep * n) entries of
largest magnitude; "prune" sends the non-zero entries of (pruned target - base), the target
having lost the (1 - keep) smallest-magnitude fraction of every weight matrix (biases whole).
"mask" sends the entries under a seeded mask (`federated.mask`) whatever their value: its
`index` is ["seeded", nnz, mask bytes], from which the receiver rebuilds the positions, so they
cost 8 bytes a tensor instead of about one byte each.
`index` gives the sent entries' positions (`federated.sparsify` codings), the rest of the
delta is zero. `values` are little-endian float32 (bits 32) or packed codes with one float32
scale per `block` sent values (`federated.compression`). `base` and `digest` are the raw
sha256 of `params.digest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from federated.compression import (
    BITS,
    dequantize,
    num_blocks,
    pack_codes,
    packed_size,
    quantize,
    unpack_codes,
)
from federated.errors import NumericsError, PayloadError
from federated.mask import SeededMask
from federated.params import ParamSpec
from federated.sparsify import decode_indices, encode_indices, top_k

V2_VERSION = 2
V2_METHODS = ("quant", "topk", "prune", "mask")
SEEDED = "seeded"
V2_BITS = (32, *BITS)
V2_KEYS = frozenset(
    {"v", "method", "bits", "block", "keep", "base", "digest", "spec", "index", "values", "scales"}
)
_MAX_NDIM = 8
_MAX_NAME_LEN = 128


@dataclass(frozen=True)
class V2Document:
    """A validated version-2 document with its delta decoded to one flat float32 vector."""

    method: str
    bits: int
    block: int
    keep: float
    base_digest: str | None
    digest: str
    spec: ParamSpec
    delta: np.ndarray
    nnz: int | None


def _check_value_sizes(raw: bytes, scales_raw: bytes, *, bits: int, block: int, count: int) -> None:
    """Raise PayloadError unless the value and scale bytes fit `count` values exactly."""
    if bits == 32:
        if len(raw) != 4 * count or scales_raw:
            raise PayloadError(f"{count} float32 values need {4 * count} bytes and no scales")
    elif len(raw) != packed_size(count, bits) or len(scales_raw) != 4 * num_blocks(count, block):
        raise PayloadError(
            f"{count} values of {bits} bits need {packed_size(count, bits)} bytes and "
            f"{num_blocks(count, block)} scales of block {block}"
        )


def _decode_values(raw: bytes, scales_raw: bytes, *, bits: int, block: int, count: int) -> Any:
    """Return `count` float32 values from their wire bytes (shared by encoder and decoder)."""
    _check_value_sizes(raw, scales_raw, bits=bits, block=block, count=count)
    if bits == 32:
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    scales = np.frombuffer(scales_raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise PayloadError("scales must be finite and non-negative")
    try:
        codes = unpack_codes(raw, bits=bits, count=count)
    except NumericsError as exc:
        raise PayloadError(f"bad packed codes: {exc}") from exc
    with np.errstate(over="ignore", invalid="ignore"):  # checked by the caller
        return dequantize(codes, scales, block=block)


def encode_v2(
    delta: np.ndarray,
    *,
    method: str,
    bits: int,
    block: int,
    keep: float,
    rng: np.random.Generator,
    level: int,
    spec: ParamSpec,
    mask: SeededMask | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Return the wire fields describing a flat delta and the flat delta a receiver decodes."""
    n = delta.size
    if method == "quant":
        idx = None
    elif method == "mask":
        if mask is None:
            raise NumericsError("method mask needs a mask")
        idx = np.flatnonzero(mask.flat(spec)).astype(np.int64)
        if n and not idx.size:
            raise NumericsError("the mask keeps no entry of the model")
        keep = idx.size / n if n else 1.0  # the share the mask keeps
    elif method == "topk":
        idx = top_k(delta, math.ceil(keep * n))
        idx = idx[delta[idx] != 0]
    else:
        idx = np.flatnonzero(delta).astype(np.int64)
    chosen = delta if idx is None else delta[idx]
    if bits == 32:
        raw, scales_raw = chosen.astype("<f4").tobytes(), b""
    else:
        codes, scales = quantize(chosen, bits=bits, block=block, rng=rng)
        raw, scales_raw = pack_codes(codes, bits=bits), scales.astype("<f4").tobytes()
    values = _decode_values(raw, scales_raw, bits=bits, block=block, count=chosen.size)
    decoded = np.zeros(n, dtype=np.float32)
    index: list[Any] | None = None
    if idx is None:
        decoded[:] = values
    else:
        decoded[idx] = values
        if method == "mask" and mask is not None:
            coding, index_raw = SEEDED, mask.to_bytes()
        else:
            coding, index_raw = encode_indices(idx, n, level=level)
        index = [coding, int(idx.size), index_raw]
    fields = {
        "v": V2_VERSION,
        "method": method,
        "bits": bits,
        "block": block,
        "keep": float(keep),
        "index": index,
        "values": raw,
        "scales": scales_raw,
    }
    return fields, decoded


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PayloadError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _raw_digest(value: Any, what: str) -> str:
    if not isinstance(value, bytes) or len(value) != 32:
        raise PayloadError(f"{what} must be 32 raw bytes")
    return value.hex()


def _spec(value: Any, max_tensors: int, max_elements: int) -> tuple[ParamSpec, int]:
    """Validate the tensor list; return it and its total number of elements."""
    if not isinstance(value, list) or len(value) > max_tensors:
        raise PayloadError(f"spec must be a list of at most {max_tensors} tensors")
    spec: list[tuple[str, tuple[int, ...]]] = []
    total = 0
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 2:
            raise PayloadError("spec entries must be [name, shape] pairs")
        name, shape_raw = entry
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_LEN:
            raise PayloadError(f"tensor name must be a non-empty string, got {name!r}")
        if not isinstance(shape_raw, list) or len(shape_raw) > _MAX_NDIM:
            raise PayloadError(f"tensor {name!r}: shape must be a list of at most {_MAX_NDIM}")
        shape = tuple(_int(d, f"tensor {name!r} dimension", 0, max_elements) for d in shape_raw)
        total += math.prod(shape)
        if total > max_elements:
            raise PayloadError(f"payload has more than {max_elements} elements")
        spec.append((name, shape))
    if len({name for name, _ in spec}) != len(spec):
        raise PayloadError("tensor names are not unique")
    return tuple(spec), total


def _seeded_indices(raw: bytes, spec: ParamSpec, nnz: int) -> np.ndarray:
    """The positions a "seeded" index names; they must number `nnz`."""
    idx = np.flatnonzero(SeededMask.from_bytes(raw, len(spec)).flat(spec))
    if idx.size != nnz:
        raise PayloadError(f"the mask keeps {idx.size} entries, the payload says {nnz}")
    return idx


def decode_v2(top: dict[str, Any], *, max_tensors: int, max_elements: int) -> V2Document:
    """Validate a version-2 map and decode its delta; raise PayloadError if anything is off."""
    if set(top) != V2_KEYS:
        raise PayloadError(f"version 2 payload must have keys {sorted(V2_KEYS)}")
    method = top["method"]
    if method not in V2_METHODS:
        raise PayloadError(f"unknown version 2 method {method!r}")
    bits = top["bits"]
    if type(bits) is not int or bits not in V2_BITS or (method == "quant" and bits == 32):
        raise PayloadError(f"bits must be one of {V2_BITS} (not 32 for quant), got {bits!r}")
    block = _int(top["block"], "block", 1, max(1, max_elements))
    keep = top["keep"]
    if not isinstance(keep, float) or not 0.0 < keep <= 1.0:
        raise PayloadError(f"keep must be a float in (0, 1], got {keep!r}")
    base = None if top["base"] is None else _raw_digest(top["base"], "base")
    digest = _raw_digest(top["digest"], "digest")
    spec, n = _spec(top["spec"], max_tensors, max_elements)
    index = top["index"]
    if (index is None) != (method == "quant"):
        raise PayloadError(f"method {method} {'must not' if index is None else 'must'} be dense")
    values_raw, scales_raw = top["values"], top["scales"]
    if not isinstance(values_raw, bytes) or not isinstance(scales_raw, bytes):
        raise PayloadError("values and scales must be binary")
    if index is None:
        nnz = None
        delta = _decode_values(values_raw, scales_raw, bits=bits, block=block, count=n)
    else:
        if not isinstance(index, list) or len(index) != 3:
            raise PayloadError("index must be [coding, nnz, bytes]")
        coding, nnz_raw, index_raw = index
        limit = math.ceil(keep * n) if method == "topk" else n
        nnz = _int(nnz_raw, "nnz", 0, limit)
        if not isinstance(coding, str) or not isinstance(index_raw, bytes):
            raise PayloadError("index coding must be a string and its data binary")
        if (coding == SEEDED) != (method == "mask"):
            raise PayloadError(f"method {method} cannot use index coding {coding!r}")
        # Every size is checked before anything is built: values, then positions, then delta.
        _check_value_sizes(values_raw, scales_raw, bits=bits, block=block, count=nnz)
        if method == "mask":
            idx = _seeded_indices(index_raw, spec, nnz)
        else:
            idx = decode_indices(coding, index_raw, n=n, count=nnz)
        values = _decode_values(values_raw, scales_raw, bits=bits, block=block, count=nnz)
        delta = np.zeros(n, dtype=np.float32)
        delta[idx] = values
    if not np.all(np.isfinite(delta)):
        raise PayloadError("payload decodes to non-finite values")
    return V2Document(method, bits, block, keep, base, digest, spec, delta, nnz)
