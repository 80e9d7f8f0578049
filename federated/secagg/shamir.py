"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

2^256 + 297 is the smallest prime above 2^256, so every 32-byte secret is a field element and
one share is a single 33-byte value (no chunking). A share is the point (x, f(x)) of a random
polynomial f of degree t - 1 with f(0) = secret; any t points give f(0) by Lagrange
interpolation and t - 1 points leave it uniform. Coefficients are 32 random bytes each, i.e.
uniform on [0, 2^256), within 2^-247 of uniform on the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from federated.secagg.errors import SecAggError, ThresholdError
from federated.secagg.keys import RandomBytes

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "Share",
    "combine",
    "interpolate_at_zero",
    "split_secret",
]

PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_BYTES = 33  # a field element below 2^257
_X_BYTES = 4


@dataclass(frozen=True, slots=True)
class Share:
    """One point (x, y) of a sharing polynomial; x > 0."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        """Return x (4 bytes) || y (33 bytes), big-endian."""
        return self.x.to_bytes(_X_BYTES, "big") + self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, blob: bytes) -> Share:
        """Parse `to_bytes` output, rejecting wrong sizes and values outside the field."""
        if len(blob) != _X_BYTES + SHARE_BYTES:
            raise SecAggError(f"a share is {_X_BYTES + SHARE_BYTES} bytes, got {len(blob)}")
        x = int.from_bytes(blob[:_X_BYTES], "big")
        y = int.from_bytes(blob[_X_BYTES:], "big")
        if x == 0 or y >= PRIME:
            raise SecAggError("share outside the field")
        return cls(x, y)


def split_secret(
    secret: bytes, threshold: int, xs: Sequence[int], random_bytes: RandomBytes
) -> list[Share]:
    """Return a share of the 32-byte `secret` per x in `xs`; any `threshold` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(xs)) != len(xs) or any(not 0 < x < 2 ** (8 * _X_BYTES) for x in xs):
        raise SecAggError("share x-coordinates must be distinct, positive 32-bit integers")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [
        int.from_bytes(random_bytes(SECRET_BYTES), "big") for _ in range(threshold - 1)
    ]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def interpolate_at_zero(shares: Sequence[Share]) -> int:
    """Return f(0) for the lowest-degree polynomial through all `shares` (distinct x)."""
    xs = [s.x % PRIME for s in shares]
    if len(set(xs)) != len(xs) or 0 in xs:
        raise SecAggError("shares must have distinct, non-zero x-coordinates")
    total = 0
    for j, share in enumerate(shares):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xs[j]) % PRIME
        total = (total + share.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: Sequence[Share], threshold: int, owner: int | None = None) -> bytes:
    """Return the 32-byte secret from the first `threshold` shares; fewer raise ThresholdError.

    Args:
        owner: the client whose secret this is, carried by the error.
    """
    distinct = {s.x for s in shares}
    if len(distinct) < threshold:
        raise ThresholdError(threshold, len(distinct), owner)
    if len(distinct) != len(shares):
        raise SecAggError("duplicate share x-coordinates")
    value = interpolate_at_zero(shares[:threshold])
    if value >= 2 ** (8 * SECRET_BYTES):
        raise SecAggError("shares are inconsistent: the recovered value is not a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")
