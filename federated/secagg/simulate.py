"""Run a whole SecAgg / SecAgg+ round in memory, with dropouts, and measure what it costs.

Costs per client are the bytes it sends and receives (field bytes, see `config`) and the CPU
time of its own steps (`time.thread_time`, single-threaded, so no other client is counted).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federated.errors import ShapeError
from federated.secagg.client import SecAggClient
from federated.secagg.config import MaskedInput, SecAggConfig, UnmaskResponse
from federated.secagg.errors import SecAggError
from federated.secagg.keys import RandomBytes
from federated.secagg.server import SecAggServer

__all__ = ["ClientCost", "SimulationResult", "simulate_secagg"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass
class ClientCost:
    """What one client spent in the round."""

    bytes_sent: int = 0
    bytes_received: int = 0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class SimulationResult:
    """The decoded sum over `survivors` (U3), its ring form, and the costs."""

    total: NDArray[np.float64]
    encoded_total: NDArray[np.uint32]
    survivors: frozenset[int]
    costs: dict[int, ClientCost]
    server_cpu_seconds: float


def _timed(cost: ClientCost, step: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    start = time.thread_time()
    try:
        return step(*args, **kwargs)
    finally:
        cost.cpu_seconds += time.thread_time() - start


def simulate_secagg(
    inputs: ArrayLike,
    config: SecAggConfig,
    *,
    drop_before_sharing: Collection[int] = (),
    drop_before_input: Collection[int] = (),
    drop_after_input: Collection[int] = (),
    random_bytes: RandomBytes = os.urandom,
) -> SimulationResult:
    """Run the four rounds for `inputs` (one row per client) with the given dropouts.

    Every client advertises keys. Args name who drops next:
        drop_before_sharing: leave after advertising keys, before sharing them.
        drop_before_input: leave after sharing keys, before sending a masked input.
        drop_after_input: send a masked input, then leave before answering the unmask request.
    """
    x = np.asarray(inputs, dtype=np.float64)
    n = config.num_clients
    if x.shape != (n, config.vector_length):
        raise ShapeError(f"expected inputs of shape {(n, config.vector_length)}, got {x.shape}")
    groups = [set(drop_before_sharing), set(drop_before_input), set(drop_after_input)]
    if sum(map(len, groups)) != len(set().union(*groups)):
        raise SecAggError("a client can drop only once")
    clients = [SecAggClient(i, config, random_bytes) for i in range(n)]
    costs = {i: ClientCost() for i in range(n)}
    server, server_cost = SecAggServer(config), ClientCost()

    advertised = [_timed(costs[c.client_id], c.advertise_keys) for c in clients]
    for a in advertised:
        costs[a.client_id].bytes_sent += a.wire_size
    _timed(server_cost, server.collect_keys, advertised)

    alive = [c for c in clients if c.client_id not in groups[0]]
    sealed = []
    for c in alive:
        cost = costs[c.client_id]
        peers = _timed(server_cost, server.keys_for, c.client_id)
        cost.bytes_received += sum(p.wire_size for p in peers.values())
        out = _timed(cost, c.share_keys, peers)
        cost.bytes_sent += sum(m.wire_size for m in out)
        sealed.extend(out)
    _timed(server_cost, server.collect_shares, sealed)

    alive = [c for c in alive if c.client_id not in groups[1]]
    masked: list[MaskedInput] = []
    for c in alive:
        cost = costs[c.client_id]
        mail = _timed(server_cost, server.shares_for, c.client_id)
        cost.bytes_received += sum(m.wire_size for m in mail)
        msg = _timed(cost, c.masked_input, x[c.client_id], mail)
        cost.bytes_sent += msg.wire_size
        masked.append(msg)
    request = _timed(server_cost, server.collect_masked_inputs, masked)

    alive = [c for c in alive if c.client_id not in groups[2]]
    responses: list[UnmaskResponse] = []
    for c in alive:
        cost = costs[c.client_id]
        cost.bytes_received += request.wire_size
        resp = _timed(cost, c.unmask, request)
        cost.bytes_sent += resp.wire_size
        responses.append(resp)
    encoded = _timed(server_cost, server.unmask, responses)
    return SimulationResult(
        total=server.decode(encoded),
        encoded_total=encoded,
        survivors=request.survivors,
        costs=costs,
        server_cpu_seconds=server_cost.cpu_seconds,
    )
