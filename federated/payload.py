"""The self-describing weight payload: a (quantized) delta between two models, as bytes.

Wire format, version 1: a zstd frame (content size always written) holding one msgpack map::

    {"v": 1, "method": "int8" | "float32", "block": int,
     "base_digest": str | None, "digest": str,
     "tensors": [{"name": str, "shape": [int, ...], "q": bin, "scales": bin}, ...]}

`q` holds int8 values ("int8") or little-endian float32 values ("float32"); `scales` holds one
little-endian float32 per block of `block` elements ("int8") or nothing ("float32"). `digest`
is `params.digest` of the model the receiver rebuilds, `base_digest` that of the model the delta
applies to (None for a full model). Arrays travel as raw bytes: never pickle.

Version 2 (`federated._payload_v2`) adds the methods "quant" (dense, 8/4/2 bits), "topk"
(the largest entries of the delta, compact indices), "prune" (a magnitude-pruned model) and
"mask" (the entries under a seeded sparse mask, positions rebuilt from the seed);
`make_payload` writes version 1 for "int8" and "float32", so older receivers keep working,
and `read_payload` reads both versions.
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
from federated._payload_v2 import V2_BITS, V2_METHODS, V2_VERSION, decode_v2, encode_v2
from federated.compression import dequantize_int8, quantize_int8
from federated.errors import NumericsError, PayloadError
from federated.mask import SeededMask
from federated.params import (
    Params,
    ParamSpec,
    add,
    check_finite,
    digest,
    flatten,
    spec_of,
    sub,
    unflatten,
)
from federated.sparsify import prune_magnitude

__all__ = [
    "ALL_METHODS",
    "DEFAULT_LIMITS",
    "Payload",
    "PayloadLimits",
    "apply_payload",
    "make_payload",
    "read_payload",
]

DEFAULT_LIMITS = PayloadLimits()
ALL_METHODS = (*METHODS, *V2_METHODS)


@dataclass(frozen=True)
class Payload:
    """A decoded, validated payload; `delta` is already dequantized to float32."""

    method: str
    base_digest: str | None
    digest: str
    delta: Params
    bits: int = 32
    block: int = 0
    keep: float = 1.0
    nnz: int | None = None
    version: int = FORMAT_VERSION


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


def _keep(
    method: str,
    bits: int | None,
    density: float | None,
    sparsity: float | None,
    mask: SeededMask | None,
) -> float:
    """Check the parameters of a method; return the fraction of entries it keeps."""
    if method in METHODS:
        if bits is not None or density is not None or sparsity is not None or mask is not None:
            raise NumericsError(f"method {method} takes no bits, density, sparsity or mask")
        return 1.0
    if (mask is not None) != (method == "mask"):
        raise NumericsError("mask is required by method mask and only by it")
    if bits not in V2_BITS or (method == "quant" and bits == 32):
        raise NumericsError(f"bits must be one of {V2_BITS} (not 32 for quant), got {bits!r}")
    if (density is not None) != (method == "topk"):
        raise NumericsError("density is required by topk and only by topk")
    if (sparsity is not None) != (method == "prune"):
        raise NumericsError("sparsity is required by prune and only by prune")
    if density is not None and not 0.0 < density <= 1.0:
        raise NumericsError(f"density must be in (0, 1], got {density}")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise NumericsError(f"sparsity must be in [0, 1), got {sparsity}")
    if mask is not None:
        return 1.0  # encode_v2 writes the share the mask actually keeps
    return density if density is not None else 1.0 - (sparsity or 0.0)


def make_payload(
    target: Params,
    base: Params | None,
    *,
    rng: np.random.Generator,
    method: str = "int8",
    block: int = 256,
    level: int = 3,
    bits: int | None = None,
    density: float | None = None,
    sparsity: float | None = None,
    mask: SeededMask | None = None,
) -> tuple[bytes, Params]:
    """Encode `target` as a delta against `base` (the full model when None).

    Returns the blob and the model a receiver will rebuild from it (base + decoded delta),
    bit for bit; the blob's digest is the digest of that model.

    Args:
        method: "int8" or "float32" (format version 1); "quant", "topk", "prune" or "mask"
            (version 2).
        bits: value width of the version 2 methods: 8 (default), 4, 2, or 32 (not for quant).
        density: topk only; the fraction of the delta's entries sent (the largest).
        sparsity: prune only; the fraction of each weight matrix zeroed (the smallest).
        mask: mask only; the seeded mask of the round. Entries of the delta outside it are
            not sent (the receiver's model differs there, as its digest records).
    """
    if method not in ALL_METHODS:
        raise NumericsError(f"unknown payload method {method!r}; expected one of {ALL_METHODS}")
    if block < 1:
        raise NumericsError(f"block must be positive, got {block}")
    if method in V2_METHODS and bits is None:
        bits = 8
    keep = _keep(method, bits, density, sparsity, mask)
    check_finite(target)
    if base is not None:
        check_finite(base)
    if method in V2_METHODS:
        model = prune_magnitude(target, sparsity) if sparsity is not None else target
        return _make_v2(
            model,
            base,
            rng=rng,
            method=method,
            bits=bits or 8,
            block=block,
            keep=keep,
            level=level,
            mask=mask,
        )
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


def _make_v2(
    model: Params,
    base: Params | None,
    *,
    rng: np.random.Generator,
    method: str,
    bits: int,
    block: int,
    keep: float,
    level: int,
    mask: SeededMask | None,
) -> tuple[bytes, Params]:
    """Encode `model - base` as a version 2 document; see `make_payload`."""
    spec = spec_of(model)
    delta = flatten(model) if base is None else flatten(sub(model, base))
    fields, decoded = encode_v2(
        delta,
        method=method,
        bits=bits,
        block=block,
        keep=keep,
        rng=rng,
        level=level,
        spec=spec,
        mask=mask,
    )
    reconstructed = _rebuild(base, unflatten(decoded, spec))
    check_finite(reconstructed)
    document = {
        **fields,
        "base": None if base is None else bytes.fromhex(digest(base)),
        "digest": bytes.fromhex(digest(reconstructed)),
        "spec": [[name, list(shape)] for name, shape in spec],
    }
    packed = msgpack.packb(document, use_bin_type=True)
    blob = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(packed)
    return blob, reconstructed


def _read_v2(document: dict[str, object], limits: PayloadLimits) -> Payload:
    doc = decode_v2(document, max_tensors=limits.max_tensors, max_elements=limits.max_elements)
    return Payload(
        method=doc.method,
        base_digest=doc.base_digest,
        digest=doc.digest,
        delta=unflatten(doc.delta, doc.spec),
        bits=doc.bits,
        block=doc.block,
        keep=doc.keep,
        nnz=doc.nnz,
        version=V2_VERSION,
    )


def read_payload(blob: bytes, *, limits: PayloadLimits = DEFAULT_LIMITS) -> Payload:
    """Decode and validate a payload; raise PayloadError (and nothing else) if it is bad."""
    try:
        document = decompress_and_unpack(blob, limits)
        version = document.get("v") if isinstance(document, dict) else None
        if type(version) is int and version == V2_VERSION:
            return _read_v2(document, limits)
        doc = decode_document(document, limits)
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
    bits = 8 if doc.method == "int8" else 32
    return Payload(doc.method, doc.base_digest, doc.digest, delta, bits=bits, block=doc.block)


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
