"""Secure aggregation maths: SecAgg (Bonawitz et al. 2017) with SecAgg+ graphs (Bell et al. 2020).

Pure functions and small classes, no I/O. Ring Z_{2^32} with fixed-point encoding
(`encoding`), ChaCha20 mask expansion (`prg`), X25519 + HKDF-SHA256 key agreement and AES-GCM
share sealing (`keys`), Shamir sharing over GF(2^256 + 297) (`shamir`), Harary neighbour graphs
(`graph`), the two protocol sides (`client`, `server`) and an in-memory round (`simulate`).
Cryptographic secrets come from `os.urandom` unless a `RandomBytes` source is injected;
the neighbour graph comes from an injected `np.random.Generator`.

Left out: the consistency-check round with signatures (needed against a malicious server) and
a public-key infrastructure binding keys to clients.
"""

from federated.secagg.client import SecAggClient
from federated.secagg.config import (
    AdvertisedKeys,
    EncryptedShares,
    MaskedInput,
    SecAggConfig,
    UnmaskRequest,
    UnmaskResponse,
    make_config,
)
from federated.secagg.encoding import RING_BITS, FixedPoint
from federated.secagg.errors import SecAggError, ThresholdError
from federated.secagg.graph import Neighbours, choose_params, complete_graph, harary_graph
from federated.secagg.keys import KeyPair, RandomBytes, agree, deterministic_bytes, generate_keypair
from federated.secagg.prg import expand_mask
from federated.secagg.server import SecAggServer
from federated.secagg.shamir import PRIME, Share, combine, interpolate_at_zero, split_secret
from federated.secagg.simulate import ClientCost, SimulationResult, simulate_secagg

__all__ = [
    "PRIME",
    "RING_BITS",
    "AdvertisedKeys",
    "ClientCost",
    "EncryptedShares",
    "FixedPoint",
    "KeyPair",
    "MaskedInput",
    "Neighbours",
    "RandomBytes",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggServer",
    "Share",
    "SimulationResult",
    "ThresholdError",
    "UnmaskRequest",
    "UnmaskResponse",
    "agree",
    "choose_params",
    "combine",
    "complete_graph",
    "deterministic_bytes",
    "expand_mask",
    "generate_keypair",
    "harary_graph",
    "interpolate_at_zero",
    "make_config",
    "simulate_secagg",
    "split_secret",
]
