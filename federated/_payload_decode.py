"""Defensive decoding of payload bytes: size limits first, then structure, types and lengths.

Version 1 documents are checked here; version 2 ones by `federated._payload_v2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zstandard

from federated.compression import num_blocks
from federated.errors import PayloadError

FORMAT_VERSION = 1
METHODS = ("int8", "float32")
_TOP_KEYS = frozenset({"v", "method", "block", "base_digest", "digest", "tensors"})
_TENSOR_KEYS = frozenset({"name", "shape", "q", "scales"})
_MAX_NDIM = 8
_MAX_MAP_LEN = 16  # the largest map of any version (version 2 has 11 keys)
_MAX_NAME_LEN = 128
_MAX_STR_LEN = 256
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class PayloadLimits:
    """Upper bounds a receiver enforces before and while decoding a payload."""

    max_bytes: int = 8 * 1024 * 1024
    max_decompressed: int = 64 * 1024 * 1024
    max_elements: int = 4_000_000
    max_tensors: int = 64


@dataclass(frozen=True)
class WireTensor:
    """One tensor as found on the wire, its byte lengths already checked."""

    name: str
    shape: tuple[int, ...]
    q: np.ndarray
    scales: np.ndarray


@dataclass(frozen=True)
class WireDocument:
    """A structurally valid payload document."""

    method: str
    block: int
    base_digest: str | None
    digest: str
    tensors: list[WireTensor]


def decompress_and_unpack(blob: bytes, limits: PayloadLimits) -> Any:
    """Check sizes, decompress with a bound, and unpack msgpack with explicit limits."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise PayloadError(f"payload must be bytes, got {type(blob).__name__}")
    if len(blob) > limits.max_bytes:
        raise PayloadError(f"payload is {len(blob)} bytes, limit is {limits.max_bytes}")
    try:
        content_size = zstandard.frame_content_size(blob)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"not a zstd frame: {exc}") from exc
    if content_size < 0:
        raise PayloadError("zstd frame does not declare its content size")
    if content_size > limits.max_decompressed:
        raise PayloadError(
            f"zstd frame declares {content_size} bytes, limit is {limits.max_decompressed}"
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            blob, max_output_size=limits.max_decompressed, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise PayloadError(f"zstd decompression failed: {exc}") from exc
    try:
        # unpackb reads `raw` in place (an Unpacker would copy it into its buffer first).
        document = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_bin_len=4 * limits.max_elements,
            max_str_len=_MAX_STR_LEN,
            max_array_len=max(limits.max_tensors, _MAX_NDIM),
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise PayloadError(f"{len(exc.extra)} bytes of trailing data after msgpack") from exc
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
        raise PayloadError(f"invalid msgpack: {exc!r}") from exc
    return document


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PayloadError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _digest_field(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise PayloadError(f"{what} must be 64 lowercase hex characters")
    return value


def _keys(value: Any, expected: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != expected:
        keys = sorted(map(repr, value)) if isinstance(value, dict) else type(value).__name__
        raise PayloadError(f"{what} must be a map with keys {sorted(expected)}, got {keys}")
    return value


def _tensor(
    value: Any, *, method: str, block: int, budget: int, max_dim: int
) -> tuple[WireTensor, int]:
    """Validate one tensor entry; return it and the number of elements it uses."""
    entry = _keys(value, _TENSOR_KEYS, "tensor")
    name = entry["name"]
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_LEN:
        raise PayloadError(f"tensor name must be a non-empty string, got {name!r}")
    shape_raw = entry["shape"]
    if not isinstance(shape_raw, list) or len(shape_raw) > _MAX_NDIM:
        raise PayloadError(f"tensor {name!r}: shape must be a list of at most {_MAX_NDIM} ints")
    shape = tuple(_int(d, f"tensor {name!r} dimension", 0, max_dim) for d in shape_raw)
    size = math.prod(shape)
    if size > budget:
        raise PayloadError(f"tensor {name!r} has {size} elements, only {budget} allowed")
    q_raw, scales_raw = entry["q"], entry["scales"]
    if not isinstance(q_raw, bytes) or not isinstance(scales_raw, bytes):
        raise PayloadError(f"tensor {name!r}: q and scales must be binary")
    if method == "int8":
        want_q, want_scales = size, 4 * num_blocks(size, block)
    else:
        want_q, want_scales = 4 * size, 0
    if len(q_raw) != want_q or len(scales_raw) != want_scales:
        raise PayloadError(
            f"tensor {name!r}: got {len(q_raw)}/{len(scales_raw)} bytes of values/scales, "
            f"shape {shape} with method {method} needs {want_q}/{want_scales}"
        )
    if method == "int8":
        q = np.frombuffer(q_raw, dtype=np.int8).copy()
        scales = np.frombuffer(scales_raw, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise PayloadError(f"tensor {name!r}: scales must be finite and non-negative")
    else:
        q = np.frombuffer(q_raw, dtype="<f4").astype(np.float32)
        scales = np.zeros(0, dtype=np.float32)
    return WireTensor(name=name, shape=shape, q=q, scales=scales), size


def decode_document(document: Any, limits: PayloadLimits) -> WireDocument:
    """Validate the unpacked map: version, method, digests, and every tensor's bytes."""
    top = _keys(document, _TOP_KEYS, "payload")
    version = top["v"]
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise PayloadError(f"unsupported payload version {version!r}")
    method = top["method"]
    if method not in METHODS:
        raise PayloadError(f"unknown payload method {method!r}")
    block = _int(top["block"], "block", 1, max(1, limits.max_elements))
    base_raw = top["base_digest"]
    base_digest = None if base_raw is None else _digest_field(base_raw, "base_digest")
    payload_digest = _digest_field(top["digest"], "digest")
    entries = top["tensors"]
    if not isinstance(entries, list) or len(entries) > limits.max_tensors:
        raise PayloadError(f"tensors must be a list of at most {limits.max_tensors} entries")
    tensors: list[WireTensor] = []
    budget = limits.max_elements
    for entry in entries:
        tensor, used = _tensor(
            entry, method=method, block=block, budget=budget, max_dim=limits.max_elements
        )
        budget -= used
        tensors.append(tensor)
    if len({t.name for t in tensors}) != len(tensors):
        raise PayloadError("tensor names are not unique")
    return WireDocument(method, block, base_digest, payload_digest, tensors)
