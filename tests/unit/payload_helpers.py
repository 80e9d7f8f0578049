"""Helpers the payload tests share: small models, nudged copies, and raw (un)packing."""

from typing import Any

import msgpack
import numpy as np
import zstandard

from federated.model import init_mlp
from federated.params import Params


def model(seed: int = 0, sizes: tuple[int, ...] = (8, 6, 3)) -> Params:
    """A small He-initialised MLP."""
    return init_mlp(sizes, np.random.default_rng(seed))


def nudged(params: Params, seed: int, scale: float = 0.01) -> Params:
    """`params` plus Gaussian noise of std `scale`, as float32."""
    rng = np.random.default_rng(seed)
    return {
        k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in params.items()
    }


def unpack(blob: bytes) -> dict[str, Any]:
    """The msgpack document inside a payload's zstd frame."""
    return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(blob), raw=False)


def pack(document: Any) -> bytes:
    """A (possibly doctored) document back into payload bytes."""
    return zstandard.ZstdCompressor().compress(msgpack.packb(document, use_bin_type=True))
