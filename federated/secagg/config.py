"""One secure-aggregation round's public parameters, and wire messages with their sizes.

Sizes count the fields' bytes (client ids as 4 bytes, no framing), the same for every scheme.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from federated.errors import NumericsError
from federated.secagg.encoding import FixedPoint
from federated.secagg.graph import Neighbours, choose_params, complete_graph, harary_graph
from federated.secagg.shamir import SHARE_BYTES, Share

__all__ = [
    "ID_BYTES",
    "AdvertisedKeys",
    "EncryptedShares",
    "MaskedInput",
    "SecAggConfig",
    "UnmaskRequest",
    "UnmaskResponse",
    "make_config",
]

ID_BYTES = 4


@dataclass(frozen=True)
class SecAggConfig:
    """Clients, vector length, neighbour graph, threshold, encoding and round context."""

    num_clients: int
    vector_length: int
    neighbours: Neighbours
    threshold: int
    encoding: FixedPoint
    context: bytes = b""

    def __post_init__(self) -> None:
        n = self.num_clients
        if len(self.neighbours) != n or n < 2:
            raise NumericsError(f"need a neighbour set for each of n >= 2 clients, n={n}")
        for i, nbrs in enumerate(self.neighbours):
            if i in nbrs or any(not 0 <= j < n or i not in self.neighbours[j] for j in nbrs):
                raise NumericsError(f"neighbour graph is not symmetric and loop-free at {i}")
        # A majority of the k + 1 holders, and rebuildable from the neighbours alone.
        if not (self.degree + 1) // 2 < self.threshold <= self.min_degree:
            bounds = f"({(self.degree + 1) // 2}, {self.min_degree}]"
            raise NumericsError(f"threshold must be in {bounds}, got {self.threshold}")
        if self.encoding.max_clients < n:
            raise NumericsError("the encoding must allow the sum of every client")
        if self.vector_length < 1:
            raise NumericsError(f"vector_length must be positive, got {self.vector_length}")

    @property
    def degree(self) -> int:
        """Return the largest neighbour count k."""
        return max(len(s) for s in self.neighbours)

    @property
    def min_degree(self) -> int:
        """Return the smallest neighbour count."""
        return min(len(s) for s in self.neighbours)


def make_config(
    num_clients: int,
    vector_length: int,
    *,
    clip: float,
    rng: np.random.Generator,
    dropout: float = 0.1,
    degree: int | None = None,
    threshold: int | None = None,
    context: bytes = b"",
) -> SecAggConfig:
    """Return a config: k and t from `choose_params(dropout)` unless given; graph from `rng`.

    Args:
        degree: k; num_clients - 1 is full-graph SecAgg.
        threshold: t; defaults to (k + 1) // 2 + 1, a majority of the k + 1 holders.
    """
    if degree is None:
        degree, chosen_t = choose_params(num_clients, dropout=dropout)
        threshold = chosen_t if threshold is None else threshold
    elif threshold is None:
        threshold = (degree + 1) // 2 + 1
    graph = (
        complete_graph(num_clients)
        if degree >= num_clients - 1
        else harary_graph(num_clients, degree, rng)
    )
    return SecAggConfig(
        num_clients=num_clients,
        vector_length=vector_length,
        neighbours=graph,
        threshold=threshold,
        encoding=FixedPoint(clip=clip, max_clients=num_clients),
        context=context,
    )


@dataclass(frozen=True)
class AdvertisedKeys:
    """Round 0, client -> all: the channel key c_i^PK and the mask key s_i^PK."""

    client_id: int
    channel_public: bytes
    mask_public: bytes

    @property
    def wire_size(self) -> int:
        """Return the bytes on the wire."""
        return ID_BYTES + len(self.channel_public) + len(self.mask_public)


@dataclass(frozen=True)
class EncryptedShares:
    """Round 1, sender -> recipient via the server: shares of b_sender and s_sender^SK, sealed."""

    sender: int
    recipient: int
    sealed: bytes

    @property
    def wire_size(self) -> int:
        """Return the bytes on the wire."""
        return 2 * ID_BYTES + len(self.sealed)


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client -> server: y_i = x_i + PRG(b_i) + sum of signed pairwise masks."""

    client_id: int
    vector: NDArray[np.uint32]

    @property
    def wire_size(self) -> int:
        """Return the bytes on the wire."""
        return ID_BYTES + int(self.vector.nbytes)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, server -> clients: who sent a masked input, and who shared keys but did not."""

    survivors: frozenset[int]
    dropped: frozenset[int]

    @property
    def wire_size(self) -> int:
        """Return the bytes on the wire."""
        return ID_BYTES * (len(self.survivors) + len(self.dropped))


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 3, client -> server: seed shares of survivors and key shares of dropped clients."""

    client_id: int
    seed_shares: Mapping[int, Share]
    key_shares: Mapping[int, Share]

    @property
    def wire_size(self) -> int:
        """Return the bytes on the wire: owner id, x and y per share."""
        count = len(self.seed_shares) + len(self.key_shares)
        return ID_BYTES + count * (2 * ID_BYTES + SHARE_BYTES)
