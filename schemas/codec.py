"""The one place messages become bytes and bytes become messages.

msgpack of `model_dump()`; numpy arrays travel as an ext type holding dtype, shape and raw
bytes (never pickle). Decoding untrusted bytes sets every msgpack limit explicitly and turns
any failure into `DecodeError`.
"""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Any, TypeVar

import msgpack
import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.errors import DecodeError

T = TypeVar("T")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_NDARRAY_EXT = 1
_ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i8", "<i4", "|i1", "|u1", "<u4", "|b1"})
_MAX_DIMS = 8

_adapters: dict[Any, TypeAdapter[Any]] = {}


def _default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        # ascontiguousarray would turn a 0-d array into shape (1,); 0-d is contiguous anyway.
        arr = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dtype, copy=False)
        if arr.dtype.str not in _ALLOWED_DTYPES:
            raise TypeError(f"dtype {arr.dtype.str!r} cannot travel (allowed: {_ALLOWED_DTYPES})")
        header = msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()])
        return msgpack.ExtType(_NDARRAY_EXT, header)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> object:
    if code != _NDARRAY_EXT:
        raise DecodeError(f"unknown msgpack ext type {code}")
    dtype, shape, raw = msgpack.unpackb(data, raw=False)
    if dtype not in _ALLOWED_DTYPES:
        raise DecodeError(f"dtype {dtype!r} not allowed")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise DecodeError("bad array shape")
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise DecodeError("bad array shape")
    dt = np.dtype(dtype)
    if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(raw):
        raise DecodeError("array bytes do not match dtype and shape")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def pack(obj: object) -> bytes:
    """msgpack any plain object, numpy arrays included."""
    packed: bytes = msgpack.packb(obj, default=_default, use_bin_type=True)  # msgpack is untyped
    return packed


def encode(message: BaseModel) -> bytes:
    """Serialize a message to msgpack bytes."""
    return pack(message.model_dump(mode="python"))


def _adapter(model: Any) -> TypeAdapter[Any]:
    adapter = _adapters.get(model)
    if adapter is None:
        adapter = _adapters[model] = TypeAdapter(model)
    return adapter


def unpack(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """msgpack-decode untrusted bytes with explicit limits; raise DecodeError on failure.

    `unpackb` bounds its buffer by the input length, which is capped first.
    """
    _check_bytes(data, max_bytes)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            ext_hook=_ext_hook,
            max_bin_len=max_bytes,
            max_str_len=1024 * 1024,
            max_array_len=1_000_000,
            max_map_len=100_000,
            max_ext_len=max_bytes,
            strict_map_key=True,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"not msgpack: {exc}") from exc


def validate(obj: Any, model: type[T] | Any) -> T:
    """Validate an already-unpacked object against a model or union."""
    try:
        # `model` may be an annotated union, so the adapter is TypeAdapter[Any].
        value: T = _adapter(model).validate_python(obj)
        return value
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise DecodeError(f"{where}: {first['msg']} ({exc.error_count()} error(s))") from exc


def decode(data: bytes, model: type[T] | Any, *, max_bytes: int = MAX_MESSAGE_BYTES) -> T:
    """Decode msgpack bytes into `model` (a model class or an annotated union)."""
    # T cannot be solved from `type[T] | Any` here, so name it for mypy.
    value: T = validate(unpack(data, max_bytes=max_bytes), model)
    return value


def _check_bytes(data: object, max_bytes: int) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"payload is {type(data).__name__}, not bytes")
    if len(data) > max_bytes:
        raise DecodeError(f"payload of {len(data)} bytes exceeds {max_bytes}")


def decode_json(data: bytes, model: type[T] | Any, *, max_bytes: int = 1024 * 1024) -> T:
    """Decode JSON bytes (ops may publish with mosquitto_pub) into `model`."""
    _check_bytes(data, max_bytes)
    try:
        obj = json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise DecodeError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise DecodeError(f"JSON payload must be one object {{...}}, not {type(obj).__name__}")
    if "msg_id" not in obj:
        # Hand-written JSON has no id; derive one from the bytes, so a redelivered or
        # replayed copy is recognised as the same message.
        obj["msg_id"] = hashlib.sha256(bytes(data)).hexdigest()[:32]
    value: T = validate(obj, model)
    return value


JSON_SNIFF_BYTES = 4096


def decode_any(data: bytes, model: type[T] | Any, *, max_bytes: int = MAX_MESSAGE_BYTES) -> T:
    """Decode msgpack, or JSON when the payload starts like JSON text.

    JSON starts with `{` or `[`, maybe after whitespace; a msgpack message is a map, whose
    first byte is 0x80-0x8f, 0xde or 0xdf, never one of those.
    """
    _check_bytes(data, max_bytes)
    value: T
    if bytes(data[:JSON_SNIFF_BYTES]).lstrip(b" \t\r\n")[:1] in (b"{", b"["):
        value = decode_json(data, model)
    else:
        value = decode(data, model, max_bytes=max_bytes)
    return value
