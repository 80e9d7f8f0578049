"""The self-describing weight payload: a (quantized) delta between two models, as bytes.

Wire format, version 1: a zstd frame (content size always written) holding one msgpack map::

    {"v": 1, "method": "int8" | "float32", "block": int,
     "base_digest": str | None, "digest": str,
     "tensors": [{"name": str, "shape": [int, ...], "q": bin, "scales": bin}, ...]}

`q` holds int8 values ("int8") or little-endian float32 values ("float32"); `scales` holds one
little-endian float32 per block of `block` elements ("int8") or nothing ("float32"). `digest`
is `params.digest` of the model the receiver rebuilds, `base_digest` that of the model the delta
applies to (None for a full model). Arrays travel as raw bytes: never pickle.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np
import zstandard

from federated._payload_decode import (
    FORMAT_VERSION,
    METHODS,
    PayloadLimits,
    decode_document,
    decompress_and_unpack,
)
from federated.compression import dequantize_int8, quantize_int8
from federated.errors import NumericsError, PayloadError
from federated.params import Params, ParamSpec, add, check_finite, digest, spec_of, sub

__all__ = [
    "DEFAULT_LIMITS",
    "Payload",
    "PayloadLimits",
    "apply_payload",
    "make_payload",
    "read_payload",
]

DEFAULT_LIMITS = PayloadLimits()


@dataclass(frozen=True)
class Payload:
    """A decoded, validated payload; `delta` is already dequantized to float32."""

    method: str
    base_digest: str | None
    digest: str
    delta: Params


def _encode_tensor(
    name: str, values: np.ndarray, *, method: str, block: int, rng: np.random.Generator
) -> tuple[dict[str, object], np.ndarray]:
    """Return the wire entry of one delta tensor and the float32 values a receiver decodes."""
    flat = np.ascontiguousarray(values, dtype=np.float32).ravel()
    if method == "int8":
        q, scales = quantize_int8(flat, block=block, rng=rng)
        raw_q, raw_scales = q.tobytes(), scales.astype("<f4").tobytes()
        decoded = dequantize_int8(q, scales, block=block)
    else:
        raw_q, raw_scales = flat.astype("<f4").tobytes(), b""
        decoded = flat.copy()
    entry: dict[str, object] = {
        "name": name,
        "shape": [int(d) for d in values.shape],
        "q": raw_q,
        "scales": raw_scales,
    }
    return entry, np.asarray(decoded).reshape(values.shape)


def _rebuild(base: Params | None, delta: Params) -> Params:
    """Return the model a receiver holds after applying `delta` to `base` (None: full model)."""
    if base is None:
        return {k: v.astype(np.float32) for k, v in delta.items()}
    return add(base, delta)


def make_payload(
    target: Params,
    base: Params | None,
    *,
    rng: np.random.Generator,
    method: str = "int8",
    block: int = 256,
    level: int = 3,
) -> tuple[bytes, Params]:
    """Encode `target` as a delta against `base` (the full model when None).

    Returns the blob and the model a receiver will rebuild from it (base + decoded delta),
    bit for bit; the blob's digest is the digest of that model.
    """
    if method not in METHODS:
        raise NumericsError(f"unknown payload method {method!r}; expected one of {METHODS}")
    if block < 1:
        raise NumericsError(f"block must be positive, got {block}")
    check_finite(target)
    if base is not None:
        check_finite(base)
    delta = dict(target) if base is None else sub(target, base)
    entries: list[dict[str, object]] = []
    decoded: Params = {}
    for name, values in delta.items():
        entry, decoded[name] = _encode_tensor(name, values, method=method, block=block, rng=rng)
        entries.append(entry)
    reconstructed = _rebuild(base, decoded)
    check_finite(reconstructed)
    document = {
        "v": FORMAT_VERSION,
        "method": method,
        "block": block,
        "base_digest": None if base is None else digest(base),
        "digest": digest(reconstructed),
        "tensors": entries,
    }
    packed = msgpack.packb(document, use_bin_type=True)
    blob = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(packed)
    return blob, reconstructed


def read_payload(blob: bytes, *, limits: PayloadLimits = DEFAULT_LIMITS) -> Payload:
    """Decode and validate a payload; raise PayloadError (and nothing else) if it is bad."""
    try:
        doc = decode_document(decompress_and_unpack(blob, limits), limits)
        delta: Params = {}
        for tensor in doc.tensors:
            if doc.method == "int8":
                # Hostile scales may overflow to inf; the finiteness check below rejects them.
                with np.errstate(over="ignore", invalid="ignore"):
                    values = dequantize_int8(tensor.q, tensor.scales, block=doc.block)
            else:
                values = tensor.q
            if not np.all(np.isfinite(values)):
                raise PayloadError(f"tensor {tensor.name!r} decodes to non-finite values")
            delta[tensor.name] = values.astype(np.float32).reshape(tensor.shape)
    except PayloadError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise PayloadError(f"malformed payload: {exc}") from exc
    return Payload(method=doc.method, base_digest=doc.base_digest, digest=doc.digest, delta=delta)


def apply_payload(
    payload: Payload, base: Params | None, *, expected_spec: ParamSpec | None = None
) -> Params:
    """Rebuild the model a payload describes on top of `base` and verify its digest.

    `base` must be the model whose digest the payload names (None for a full-model payload);
    shapes must match `base` and, when given, `expected_spec`.
    """
    actual_base = None if base is None else digest(base)
    if actual_base != payload.base_digest:
        raise PayloadError(
            f"payload applies to base {payload.base_digest}, but the base given is {actual_base}"
        )
    spec = spec_of(payload.delta)
    if base is not None and spec_of(base) != spec:
        raise PayloadError(f"payload tensors {spec} do not match the base {spec_of(base)}")
    if expected_spec is not None:
        wanted = tuple((str(n), tuple(int(d) for d in s)) for n, s in expected_spec)
        if wanted != spec:
            raise PayloadError(f"payload tensors {spec} do not match the expected {wanted}")
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
        rebuilt = _rebuild(base, payload.delta)
    try:
        check_finite(rebuilt)
    except NumericsError as exc:
        raise PayloadError(f"rebuilt model is not finite: {exc}") from exc
    if digest(rebuilt) != payload.digest:
        raise PayloadError("rebuilt model does not match the payload digest")
    return rebuilt
