"""Mask expansion: a 32-byte seed becomes a uniform uint32 vector through ChaCha20.

The seed is the ChaCha20 key and the nonce is zero: every seed keys one expansion per round
(self-mask seeds are fresh random bytes, pairwise seeds come from fresh keys through HKDF with
the round context), so a fixed nonce never encrypts two different streams under one key.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

from federated.errors import NumericsError

__all__ = ["SEED_BYTES", "expand_mask"]

SEED_BYTES = 32
_NONCE = bytes(16)  # cryptography's ChaCha20 nonce: 4-byte block counter + 12-byte nonce


def expand_mask(seed: bytes, length: int) -> NDArray[np.uint32]:
    """Return `length` pseudo-random uint32 values from ChaCha20 keyed by a 32-byte `seed`."""
    if len(seed) != SEED_BYTES:
        raise NumericsError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise NumericsError(f"length must be non-negative, got {length}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(4 * length))
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32)
