"""X25519 key agreement with HKDF-SHA256, AES-GCM for shares in transit, and random sources.

Cryptographic secrets (private keys, self-mask seeds, Shamir coefficients, nonces) are drawn
from a `RandomBytes` callable: `os.urandom` by default. Tests and benchmarks may inject
`deterministic_bytes(seed)` to be reproducible; it is predictable, so never use it for real
secrets. Statistical randomness (the neighbour graph) comes from an `np.random.Generator`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federated.secagg.errors import SecAggError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "KeyPair",
    "RandomBytes",
    "agree",
    "channel_info",
    "derive_key",
    "deterministic_bytes",
    "generate_keypair",
    "mask_info",
    "open_sealed",
    "seal",
]

#: n -> n cryptographically random bytes, like `os.urandom`
RandomBytes = Callable[[int], bytes]

KEY_BYTES = 32
NONCE_BYTES = 12
_LABEL = b"fedsaga/secagg/v1/"


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An X25519 key pair: raw 32-byte secret and public keys."""

    secret: bytes
    public: bytes
    _key: X25519PrivateKey = field(compare=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        """Return the key pair of a raw 32-byte secret key."""
        try:
            key = X25519PrivateKey.from_private_bytes(secret)
        except ValueError as exc:
            raise SecAggError(f"invalid X25519 secret key ({len(secret)} bytes)") from exc
        return cls(secret, key.public_key().public_bytes_raw(), key)

    def exchange(self, peer_public: bytes) -> bytes:
        """Return the raw X25519 shared secret with `peer_public`; feed it to `derive_key`."""
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # wrong length, or a low-order point: all-zero secret
            raise SecAggError("X25519 key agreement failed: invalid or low-order key") from exc

    def agree(self, peer_public: bytes, info: bytes) -> bytes:
        """Return a 32-byte key: HKDF-SHA256(X25519(secret, peer_public), info)."""
        return derive_key(self.exchange(peer_public), info)

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()[:16]}..., secret=<hidden>)"


def generate_keypair(random_bytes: RandomBytes) -> KeyPair:
    """Return a fresh X25519 key pair whose secret comes from `random_bytes`."""
    return KeyPair.from_secret(random_bytes(KEY_BYTES))


def derive_key(shared: bytes, info: bytes) -> bytes:
    """Return HKDF-SHA256(shared, salt=None, info) as a 32-byte key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def agree(secret: bytes, peer_public: bytes, info: bytes) -> bytes:
    """Return a 32-byte key: HKDF-SHA256(X25519(secret, peer_public), info)."""
    return KeyPair.from_secret(secret).agree(peer_public, info)


def mask_info(context: bytes) -> bytes:
    """Return the HKDF info for pairwise mask seeds in the round `context` (symmetric in i, j)."""
    return _LABEL + b"mask|" + context


def channel_info(context: bytes, sender: int, recipient: int) -> bytes:
    """Return the HKDF info for the share channel sender -> recipient (one key per direction)."""
    return _LABEL + b"channel|" + sender.to_bytes(4, "big") + recipient.to_bytes(4, "big") + context


def seal(key: bytes, plaintext: bytes, aad: bytes, random_bytes: RandomBytes) -> bytes:
    """Return nonce || AES-256-GCM(key, nonce, plaintext, aad) with a random 12-byte nonce."""
    nonce = random_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Return the plaintext of `seal`'s output, or raise SecAggError if it does not verify."""
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise SecAggError("share ciphertext failed authentication") from exc


def deterministic_bytes(seed: bytes) -> RandomBytes:
    """Return a reproducible SHAKE-256 counter-mode byte source: for tests only, not secrets."""
    counter = itertools.count()

    def draw(n: int) -> bytes:
        block = seed + next(counter).to_bytes(8, "big")
        return hashlib.shake_256(block).digest(n)

    return draw
