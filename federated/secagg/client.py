"""One client's side of SecAgg / SecAgg+: keys, shares, masked input, unmasking answers.

Secrets per round: an X25519 channel pair (c) that encrypts shares to neighbours, an X25519
mask pair (s) whose agreement with a neighbour j seeds the pairwise mask p_ij, and a self-mask
seed b. All come from `random_bytes` (`os.urandom` unless a test injects a seeded source).
The masked input is y_i = x_i + PRG(b_i) + sum_{j > i} PRG(p_ij) - sum_{j < i} PRG(p_ij) mod 2^32
over the neighbours j that shared keys, so the pairwise masks cancel in the sum.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from numpy.typing import ArrayLike

from federated.secagg.config import (
    AdvertisedKeys,
    EncryptedShares,
    MaskedInput,
    SecAggConfig,
    UnmaskRequest,
    UnmaskResponse,
)
from federated.secagg.errors import SecAggError, ThresholdError
from federated.secagg.keys import (
    KeyPair,
    RandomBytes,
    channel_info,
    derive_key,
    generate_keypair,
    mask_info,
    open_sealed,
    seal,
)
from federated.secagg.prg import SEED_BYTES, expand_mask
from federated.secagg.shamir import SHARE_BYTES, Share, split_secret

__all__ = ["SecAggClient", "pairwise_sign", "share_x"]


def share_x(client_id: int) -> int:
    """Return the Shamir x-coordinate of the shares a client holds: its id + 1."""
    return client_id + 1


def pairwise_sign(i: int, j: int) -> int:
    """Return +1 if client i adds the mask it shares with j (i < j), else -1."""
    return 1 if i < j else -1


def _plaintext(sender: int, recipient: int, seed_share: Share, key_share: Share) -> bytes:
    ids = sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")
    ys = seed_share.y.to_bytes(SHARE_BYTES, "big") + key_share.y.to_bytes(SHARE_BYTES, "big")
    return ids + ys


class SecAggClient:
    """Client `client_id` of a round described by `config`; call the four rounds in order."""

    def __init__(
        self, client_id: int, config: SecAggConfig, random_bytes: RandomBytes = os.urandom
    ) -> None:
        if not 0 <= client_id < config.num_clients:
            raise SecAggError(f"client id {client_id} outside [0, {config.num_clients})")
        self.client_id = client_id
        self.config = config
        self._random_bytes = random_bytes
        self._neighbours = config.neighbours[client_id]
        self._channel: KeyPair | None = None
        self._mask: KeyPair | None = None
        self._seed: bytes | None = None
        self._peers: dict[int, AdvertisedKeys] = {}
        self._held: dict[int, tuple[Share, Share]] = {}  # owner -> (seed share, key share)
        self._links: dict[int, bytes] = {}  # neighbour -> X25519 secret of the channel keys
        self._own: tuple[Share, Share] | None = None  # this client's shares of its own secrets

    def advertise_keys(self) -> AdvertisedKeys:
        """Round 0: draw this round's secrets and return the two public keys."""
        self._channel = generate_keypair(self._random_bytes)
        self._mask = generate_keypair(self._random_bytes)
        self._seed = self._random_bytes(SEED_BYTES)
        return AdvertisedKeys(self.client_id, self._channel.public, self._mask.public)

    def share_keys(self, peers: Mapping[int, AdvertisedKeys]) -> list[EncryptedShares]:
        """Round 1: Shamir-share b_i and s_i^SK to `peers` (sealed to each) and to this client."""
        channel, mask, seed = self._secrets()
        if not set(peers) <= self._neighbours:
            raise SecAggError(f"client {self.client_id} got keys of non-neighbours")
        if any(p.client_id != j for j, p in peers.items()):
            raise SecAggError("advertised keys filed under the wrong client id")
        publics = [k for p in peers.values() for k in (p.channel_public, p.mask_public)]
        publics += [channel.public, mask.public]
        if len(set(publics)) != len(publics):
            raise SecAggError("advertised public keys are not all distinct")
        holders = [*sorted(peers), self.client_id]
        t = self.config.threshold
        if len(holders) < t:
            raise ThresholdError(t, len(holders), self.client_id)
        self._peers = dict(peers)
        # One exchange per neighbour serves both directions; HKDF info separates them.
        self._links = {j: channel.exchange(p.channel_public) for j, p in peers.items()}
        xs = [share_x(j) for j in holders]
        seed_shares = split_secret(seed, t, xs, self._random_bytes)
        key_shares = split_secret(mask.secret, t, xs, self._random_bytes)
        self._own = (seed_shares[-1], key_shares[-1])
        out = []
        for j, b_share, s_share in zip(
            holders[:-1], seed_shares[:-1], key_shares[:-1], strict=True
        ):
            key = derive_key(self._links[j], self._info(self.client_id, j))
            plain = _plaintext(self.client_id, j, b_share, s_share)
            sealed = seal(key, plain, self.config.context, self._random_bytes)
            out.append(EncryptedShares(self.client_id, j, sealed))
        return out

    def masked_input(self, x: ArrayLike, received: Sequence[EncryptedShares]) -> MaskedInput:
        """Round 2: keep the shares neighbours sent, then mask x against those neighbours."""
        _, mask, seed = self._secrets()
        if self._own is None:
            raise SecAggError("share_keys must run first")
        held = {self.client_id: self._own}
        for msg in received:
            j = msg.sender
            if msg.recipient != self.client_id or j not in self._peers or j in held:
                raise SecAggError(f"unexpected shares from {j} to {msg.recipient}")
            key = derive_key(self._links[j], self._info(j, msg.recipient))
            plain = open_sealed(key, msg.sealed, self.config.context)
            if plain[:8] != j.to_bytes(4, "big") + msg.recipient.to_bytes(4, "big"):
                raise SecAggError(f"shares from {j} name the wrong sender or recipient")
            y_seed = int.from_bytes(plain[8 : 8 + SHARE_BYTES], "big")
            y_key = int.from_bytes(plain[8 + SHARE_BYTES :], "big")
            x_me = share_x(self.client_id)
            held[j] = (Share(x_me, y_seed), Share(x_me, y_key))
        if len(held) < self.config.threshold:
            raise ThresholdError(self.config.threshold, len(held), self.client_id)
        self._held = held
        m = self.config.vector_length
        y = self.config.encoding.encode(x)
        if y.shape != (m,):
            raise SecAggError(f"input has {y.size} values, the round expects {m}")
        y += expand_mask(seed, m)
        info = mask_info(self.config.context)
        for j in sorted(held.keys() - {self.client_id}):
            pairwise = expand_mask(mask.agree(self._peers[j].mask_public, info), m)
            if pairwise_sign(self.client_id, j) > 0:
                y += pairwise
            else:
                y -= pairwise
        return MaskedInput(self.client_id, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Round 3: reveal seed shares of survivors and key shares of dropped ones, never both."""
        survivors, dropped = request.survivors, request.dropped
        if survivors & dropped:
            raise SecAggError("a client is listed both as a survivor and as dropped")
        if self.client_id not in survivors:
            raise SecAggError(f"client {self.client_id} is not listed as a survivor")
        if len(survivors) < self.config.threshold:
            raise ThresholdError(self.config.threshold, len(survivors))
        seed_shares = {j: s[0] for j, s in self._held.items() if j in survivors}
        key_shares = {j: s[1] for j, s in self._held.items() if j in dropped}
        return UnmaskResponse(self.client_id, seed_shares, key_shares)

    def _secrets(self) -> tuple[KeyPair, KeyPair, bytes]:
        if self._channel is None or self._mask is None or self._seed is None:
            raise SecAggError("advertise_keys must run first")
        return self._channel, self._mask, self._seed

    def _info(self, sender: int, recipient: int) -> bytes:
        return channel_info(self.config.context, sender, recipient)
