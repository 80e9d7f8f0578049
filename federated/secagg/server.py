"""The server's side of SecAgg / SecAgg+: route keys and shares, sum masked inputs, unmask.

Client sets follow Bonawitz et al.: U1 advertised keys, U2 shared keys (U2 within U1), U3 sent
a masked input (U3 within U2), and the responders to the unmask request (within U3). The total
of U3's masked inputs minus PRG(b_i) for i in U3, and minus the masks each i in U3 shared with
its neighbours in U2 \\ U3 (recomputed from their rebuilt s^SK), is the sum of U3's codes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from federated.secagg.client import pairwise_sign, share_x
from federated.secagg.config import (
    AdvertisedKeys,
    EncryptedShares,
    MaskedInput,
    SecAggConfig,
    UnmaskRequest,
    UnmaskResponse,
)
from federated.secagg.errors import SecAggError, ThresholdError
from federated.secagg.keys import KeyPair, mask_info
from federated.secagg.prg import expand_mask
from federated.secagg.shamir import Share, combine

__all__ = ["SecAggServer"]


class SecAggServer:
    """Server state for one round; call the methods in protocol order."""

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self._keys: dict[int, AdvertisedKeys] = {}
        self._mailbox: dict[int, list[EncryptedShares]] = {}
        self._shared: frozenset[int] = frozenset()
        self._request: UnmaskRequest | None = None
        self._total: NDArray[np.uint32] | None = None

    def collect_keys(self, keys: Iterable[AdvertisedKeys]) -> None:
        """Round 0: record the advertised keys (U1)."""
        for k in keys:
            if not 0 <= k.client_id < self.config.num_clients or k.client_id in self._keys:
                raise SecAggError(f"unexpected or repeated keys from client {k.client_id}")
            self._keys[k.client_id] = k

    def keys_for(self, client_id: int) -> dict[int, AdvertisedKeys]:
        """Return the advertised keys of `client_id`'s neighbours in U1."""
        nbrs = self.config.neighbours[client_id]
        return {j: k for j, k in self._keys.items() if j in nbrs}

    def collect_shares(self, messages: Iterable[EncryptedShares]) -> None:
        """Round 1: file sealed shares by recipient; the senders form U2."""
        senders = set()
        for msg in messages:
            if msg.sender not in self._keys or msg.recipient not in self._keys:
                raise SecAggError(f"shares from {msg.sender} to {msg.recipient} outside U1")
            if msg.recipient not in self.config.neighbours[msg.sender]:
                raise SecAggError(f"client {msg.sender} shared to non-neighbour {msg.recipient}")
            senders.add(msg.sender)
            self._mailbox.setdefault(msg.recipient, []).append(msg)
        self._shared = frozenset(senders)

    def shares_for(self, client_id: int) -> list[EncryptedShares]:
        """Return the sealed shares addressed to `client_id` by members of U2."""
        return [m for m in self._mailbox.get(client_id, []) if m.sender in self._shared]

    def collect_masked_inputs(self, inputs: Iterable[MaskedInput]) -> UnmaskRequest:
        """Round 2: sum the masked inputs (U3) mod 2^32 and return the unmask request."""
        total = np.zeros(self.config.vector_length, dtype=np.uint32)
        survivors = set()
        for msg in inputs:
            if msg.client_id not in self._shared or msg.client_id in survivors:
                raise SecAggError(f"unexpected or repeated masked input from {msg.client_id}")
            if msg.vector.dtype != np.uint32 or msg.vector.shape != total.shape:
                raise SecAggError(f"masked input of client {msg.client_id} has the wrong shape")
            total += msg.vector
            survivors.add(msg.client_id)
        if len(survivors) < self.config.threshold:
            raise ThresholdError(self.config.threshold, len(survivors))
        self._total = total
        self._request = UnmaskRequest(frozenset(survivors), self._shared - survivors)
        return self._request

    def unmask(self, responses: Iterable[UnmaskResponse]) -> NDArray[np.uint32]:
        """Round 3: rebuild the needed secrets and return the sum of the survivors' codes."""
        if self._request is None or self._total is None:
            raise SecAggError("collect_masked_inputs must run first")
        survivors, dropped = self._request.survivors, self._request.dropped
        seed_shares: dict[int, list[Share]] = {i: [] for i in survivors}
        key_shares: dict[int, list[Share]] = {d: [] for d in dropped}
        responders: set[int] = set()
        for r in responses:
            if r.client_id not in survivors or r.client_id in responders:
                raise SecAggError(f"unexpected or repeated unmask response from {r.client_id}")
            responders.add(r.client_id)
            for wanted, given in ((seed_shares, r.seed_shares), (key_shares, r.key_shares)):
                for owner, share in given.items():
                    holder = r.client_id == owner or r.client_id in self.config.neighbours[owner]
                    if owner not in wanted or not holder or share.x != share_x(r.client_id):
                        raise SecAggError(f"client {r.client_id} sent an unrequested share")
                    wanted[owner].append(share)
        t = self.config.threshold
        if len(responders) < t:
            raise ThresholdError(t, len(responders))
        m, info = self.config.vector_length, mask_info(self.config.context)
        total = self._total.copy()
        for i in sorted(survivors):
            total -= expand_mask(combine(seed_shares[i], t, owner=i), m)
        for d in sorted(dropped):
            masked_with = sorted(self.config.neighbours[d] & survivors)
            if not masked_with:
                continue  # nobody added a mask shared with d: leave its key alone
            rebuilt = KeyPair.from_secret(combine(key_shares[d], t, owner=d))
            if rebuilt.public != self._keys[d].mask_public:
                raise SecAggError(f"rebuilt mask key of client {d} does not match its public key")
            for i in masked_with:
                pairwise = expand_mask(rebuilt.agree(self._keys[i].mask_public, info), m)
                # i added sign(i, d) * PRG(p_id); remove it.
                if pairwise_sign(i, d) > 0:
                    total -= pairwise
                else:
                    total += pairwise
        return total

    def decode(self, total: NDArray[np.uint32]) -> NDArray[np.float64]:
        """Return the float sum the unmasked ring total encodes."""
        return self.config.encoding.decode_sum(total)
